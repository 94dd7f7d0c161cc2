"""solid_jax: SOLID and its dynamic-recommendation baselines in JAX.

Public API (SPEC section 4)::

  import jax, solid_jax as sj
  cfg = sj.ModelConfig(backbone="sasrec", head="solid", num_items=1683, num_semantics=20)
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  logits, aux = model.apply(params, batch)        # float32[B]
  m = sj.metrics.evaluate(scores, labels, user_ids)
  ds = sj.data.load_dataset("ml-100k")
  splits = sj.data.make_splits(ds, seq_len=10, train_negatives=4, eval_negatives=99, seed=0)
"""

from solid_jax.version import __version__
from solid_jax.model_config import ModelConfig
from solid_jax import data
from solid_jax import metrics
from solid_jax import nn
from solid_jax import models
from solid_jax.models import Model, make_model
from solid_jax.nn import codebook
from solid_jax import semantics
from solid_jax import train

__all__ = [
  "Model",
  "ModelConfig",
  "__version__",
  "codebook",
  "data",
  "make_model",
  "metrics",
  "models",
  "nn",
  "semantics",
  "train",
]
