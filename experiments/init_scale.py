r"""The scale of a dynamic head at initialisation: generated weights, logits and the first loss.

  python -m experiments.init_scale                          # every backbone, DUET at x 1, 0.1, 0.01
  python -m experiments.init_scale --backbones=sasrec --scales=1,0.01

For each backbone it initialises the main-stage model of the static head and of DUET at each
``--generator_init_scale`` (TrainConfig's defaults otherwise: d = 32, L = 10), scores a batch of
synthetic histories (`benchmarks.synthetic`: MovieLens-100K's history lengths, Zipf item
popularity) against their positive and one uniform negative target each, and prints one JSON line
per model: the standard deviation of the generated weights per layer, of the logits, and the
binary cross-entropy of those logits with half the labels positive (chance: log 2 = 0.693).
Untrained embeddings: this is the state training starts from, not a trained model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from absl import app
from absl import flags

from benchmarks import synthetic
from solid_jax import make_model
from solid_jax.train.step import weighted_bce
from solid_jax.train.train_config import TrainConfig

FLAGS = flags.FLAGS
NUM_SEMANTICS = 25  # semantic vocabulary incl. padding; the scale does not depend on it


def define_flags() -> None:
  """Defined only when run as a script: other experiments define flags of the same names."""
  flags.DEFINE_list("backbones", ["sasrec", "gru4rec", "din", "bert4rec"], "backbones to measure")
  flags.DEFINE_list("scales", ["1", "0.1", "0.01"], "DUET generator init scales")
  flags.DEFINE_integer("num_items", 5000, "item vocabulary (incl. padding)")
  flags.DEFINE_integer("batch", 512, "histories scored")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the parameters and the batch")


def measure(backbone: str, method: str, scale: float, *, num_items: int, batch: int, seed: int):
  """One model's scale at init (see the module docstring)."""
  config = TrainConfig(backbone=backbone, method=method, generator_init_scale=scale)
  cfg = config.model_config("main", num_items=num_items, num_semantics=NUM_SEMANTICS)
  model = make_model(cfg)
  params = model.init(jax.random.key(seed))
  catalog = synthetic.make_catalog(num_items, NUM_SEMANTICS, cfg.seq_len, seed=seed)
  # One negative per positive: half the labels are positive.
  b = synthetic.make_batch(catalog, batch, seed, negatives=1)
  logits, _ = model.apply(params, b)
  generated = model.generate(params, b)
  bce = weighted_bce(logits, jnp.asarray(b["label"]), jnp.asarray(b["weight"]))  # the training loss
  return {
    "backbone": backbone,
    "method": method,
    "generator_init_scale": scale,
    "generated_std": {k: float(jnp.std(v["w"])) for k, v in generated.items()},
    "logit_std": float(jnp.std(logits)),
    "bce_at_init": float(bce),
  }


def main(argv: Sequence[str]) -> None:
  del argv
  kw = {"num_items": FLAGS.num_items, "batch": FLAGS.batch, "seed": FLAGS.seed}
  for backbone in FLAGS.backbones:
    print(json.dumps(measure(backbone, "static", 1.0, **kw)))
    for scale in FLAGS.scales:
      print(json.dumps(measure(backbone, "duet", float(scale), **kw)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
