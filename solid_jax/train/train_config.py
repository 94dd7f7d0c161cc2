"""TrainConfig: everything that fixes a training run (pure data, no absl, no JAX).

One run = one method on one dataset with one seed. The defaults are the SOLID authors' settings
(SPEC sections 2 and 3); ``experiments/configs/*.py`` start from them and launcher flags override
single fields. Every field carries its help text in ``metadata["help"]``; the launcher turns each
field into an absl flag of the same name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from solid_jax import model_config as model_configs
from solid_jax.models.registry import BACKBONES, METHODS

SEMANTIC_SOURCES = ("labels", "id", "text", "image", "text_image", "id_text_image", "random")
SELECT_ON = ("valid", "test")
EVAL_PROTOCOLS = ("sampled", "full", "both")
OBJECTIVES = ("rows", "positions", "cloze")
STOP_RULES = ("select", "any")
EMBEDDING_OPTIMIZERS = ("adam", "adagrad", "sgd", "rowwise_adam")  # optim.EMBEDDING_OPTIMIZERS

# Fields that change how a run is carried out or displayed, not what it computes (metrics, records
# and checkpoints' contents are the same): they may differ between a launch and a relaunch on the
# same workdir. ``data_parallel`` is one of them: a data-parallel step computes what one device
# computes on the same global batch (up to the order of floating-point sums), so a run may be
# resumed on another number of devices.
RUNTIME_FIELDS = (
  "progress",
  "tensorboard",
  "prefetch",
  "check_every_steps",
  "checkpoint_every_steps",
  "data_parallel",
  "save_scores",
)


def parse_select_metric(value: str) -> tuple[str, str]:
  """``"full:ndcg@10"`` -> ("full", "ndcg@10"); ``"sampled:uauc"`` -> ("sampled", "uauc").

  Raises:
    ValueError: not ``protocol:metric`` with a protocol and metric that exist.
  """
  from solid_jax import metrics as metrics_lib  # pylint: disable=import-outside-toplevel

  protocol, _, metric = value.partition(":")
  names = {"sampled": metrics_lib.metric_names(), "full": metrics_lib.full_metric_names()}
  if protocol not in names or metric not in names[protocol]:
    raise ValueError(
      f"select_metric={value!r}: expected 'sampled:<m>' with m in "
      f"{list(names['sampled'])} or 'full:<m>' with m in {list(names['full'])}"
    )
  return protocol, metric


# TrainConfig fields passed unchanged to the ModelConfig of every stage.
SHARED_MODEL_FIELDS = (
  "backbone",
  "seq_len",
  "dim",
  "apg_rank",
  "generator_init_scale",
  "paper_compat",
  "num_heads",
  "ff_dim",
  "sasrec_layers",
  "bert_layers",
  "causal",
  "ff_activation",
  "embedding",
  "position_alignment",
  "target_tower",
  "head_layers",
  "init_std",
  "layer_norm_eps",
  "dropout_embedding",
  "dropout_hidden",
  "dropout_attention",
)


# TrainConfig fields passed unchanged to the ModelConfig of SOLID's stage 2.
SOLID_MODEL_FIELDS = (
  "codebook",
  "codebook_hidden",
  "clip_t",
  "clip",
  "quantize_space",
  "solid_branches",
  "consistency_weight",
  "commitment_weight",
  "ema_decay",
  "ema_dead_steps",
  "ema_prior",
)


# The smallest value of each integer field that has one; ``TrainConfig`` checks them all.
_INTEGER_LOWER_BOUNDS = {
  0: (
    "patience",
    "full_eval_users",
    "valid_full_users",
    "epochs",
    "stage0_epochs",
    "stage1_epochs",
    "num_clusters",
    "category_depth",
    "train_negatives",
    "checkpoint_every_steps",
    "prefetch",
  ),
  1: (
    "sasrec_layers",
    "bert_layers",
    "num_heads",
    "ff_dim",
    "seq_len",
    "dim",
    "batch_size",
    "eval_batch_size",
    "kmeans_iters",
    "eval_negatives",
    "check_every_steps",
  ),
}


def _field(default, help_text: str, **kwargs):
  return dataclasses.field(default=default, metadata={"help": help_text, **kwargs})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training run: data, method, model, optimisation and bookkeeping settings."""

  # Data.
  dataset: str = _field("ml-100k", "registered dataset name or path of a dataset folder")
  seq_len: int = _field(10, "history length L")
  train_negatives: int = _field(4, "negatives per training positive, resampled every epoch")
  eval_negatives: int = _field(99, "negatives per validation/test positive, fixed by the seed")
  seed: int = _field(0, "seed of the splits, the negatives, the batch order and the init")

  # Method and model.
  method: str = _field(
    "solid",
    "static | duet | apg | solid (DUET generator) | solid_apg, or "
    "one registered in solid_jax.models.METHODS by a plugin",
  )
  plugins: str = _field(
    "",
    "comma-separated modules (dotted names or .py paths) imported before "
    "anything else; they register backbones, heads or methods "
    "(solid_jax.plugins)",
  )
  backbone: str = _field(
    "sasrec",
    "sequence encoder: sasrec | gru4rec | din | bert4rec, or one "
    "registered by a plugin (--plugins)",
  )
  dim: int = _field(32, "embedding width d")
  codebook: str = _field(
    "straight_through",
    "SOLID codebook mode: straight_through (trainable codes, straight-through gradient, "
    "commitment loss), frozen (the authors'), ema (moving means anchored to the metacode) or "
    "none (no codebook: the item branch unquantised)",
    choices=model_configs.CODEBOOK_MODES,
  )
  num_codes: int = _field(
    0,
    "SOLID codebook size incl. the padding row; 0 = the metacode's rows (the semantic "
    "vocabulary); fewer: k-means of the metacode's rows into num_codes - 1 codes",
  )
  codebook_hidden: int = _field(64, "width of the decoder after the codebook")
  consistency_weight: float = _field(0.1, "lambda, weight of the stage-2 consistency loss")
  commitment_weight: float = _field(0.25, "beta, straight-through commitment loss weight")
  clip_t: float = _field(0.01, "t, the bound of the item-branch weights")
  clip: str = _field(
    "hard",
    "bound of the item-branch weights: hard (clip(x, -t, t), the paper's) or soft "
    "(t * tanh(x / t))",
    choices=model_configs.CLIPS,
  )
  quantize_space: str = _field(
    "sequence",
    "what SOLID's codebook quantises: sequence (the item branch's sequence embedding "
    "tanh((E + P) Ws + bs), the authors') or embedding (the item table's rows E, the space the "
    "stage-1 metacode lives in)",
    choices=model_configs.QUANTIZE_SPACES,
  )
  solid_branches: str = _field(
    "both",
    "SOLID's branches: both, or item / semantic alone (ablations)",
    choices=model_configs.SOLID_BRANCHES,
  )
  ema_decay: float = _field(0.99, "decay of the EMA codebook statistics (codebook=ema)")
  ema_dead_steps: int = _field(
    100,
    "codebook=ema: a code chosen by no query for this many consecutive steps is re-seeded "
    "from a random query",
  )
  ema_prior: float = _field(
    1.0,
    "codebook=ema: pseudo-count anchoring every code to its metacode row, in units of a code's "
    "uniform share of the assignments (0 = none)",
  )
  apg_rank: int = _field(16, "K of the APG low-rank cores")
  generator_init_scale: float = _field(
    1.0,
    "the generators' projections start at this times fmod(normal, 2) (1: the authors'; "
    "DUET, APG and both SOLID branches)",
  )
  paper_compat: bool = _field(
    False, "freeze the generators' final projections at their init, as the authors' code does"
  )
  num_heads: int = _field(4, "attention heads of SASRec / BERT4Rec")
  ff_dim: int = _field(128, "feed-forward width of the transformer")
  sasrec_layers: int = _field(1, "transformer blocks of SASRec")
  bert_layers: int = _field(2, "bidirectional transformer layers of BERT4Rec")
  din_hidden: str = _field("128,64", "comma-separated widths of DIN's dynamic classifier")
  causal: bool = _field(False, "causal self-attention in SASRec (needed by --objective=positions)")
  ff_activation: str = _field(
    "",
    "transformer feed-forward activation ('' = relu for SASRec, gelu for BERT4Rec)",
    choices=model_configs.ACTIVATIONS,
  )
  embedding: str = _field(
    "tanh_dense",
    "sequence embedding: tanh_dense (the SOLID authors') or layer_norm (LN(E + P), SASRec's)",
    choices=model_configs.EMBEDDINGS,
  )
  position_alignment: str = _field(
    "start",
    "position 0 is the oldest history item (start) or the "
    "newest is always position L-1 (end, a left-padded SASRec)",
    choices=("start", "end"),
  )
  target_tower: str = _field(
    "mlp",
    "target tower: mlp (the authors') or embedding (the shared item embedding, SASRec's)",
    choices=model_configs.TARGET_TOWERS,
  )
  head_layers: int = _field(
    2, "layers of the dynamic heads (and of the static head unless --static_head_layers is set)"
  )
  static_head_layers: int = _field(
    -1,
    "layers of the static head; 0 = none (the backbone's state "
    "scores the items, as SASRec); -1 = --head_layers",
  )
  init_std: float = _field(
    0.0,
    "> 0: backbone kernels and embeddings ~ N(0, init_std), biases 0 "
    "(BERT / S3-Rec init); 0: the default per-layer inits",
  )
  layer_norm_eps: float = _field(1e-5, "epsilon of the backbone's layer norms")

  # Semantics (SOLID methods only).
  semantics: str = _field(
    "labels",
    "where semantic ids come from: the dataset's category labels, "
    "or k-means over id embeddings (stage 0), CLIP text/image features or "
    "concatenations, or random (the labels dealt to the items in a random order: the same "
    "number and sizes of classes, no meaning; the control of the ablations)",
    choices=SEMANTIC_SOURCES,
  )
  num_clusters: int = _field(
    0, "k of the k-means semantics; 0 = the dataset's number of label classes"
  )
  category_depth: int = _field(
    0,
    "levels of a category path that form a label class (data with "
    "category paths, --semantics=labels); 0 = the loader's default",
  )
  kmeans_iters: int = _field(50, "Lloyd iterations of the k-means semantics")
  stage1_dir: str = _field(
    "",
    "reuse the finished stage 1 of another workdir (its DIR/stage1) "
    "instead of training one; the vocabulary must match",
  )

  # Optimisation.
  epochs: int = _field(10, "epochs of the main stage (stage 2, or the single stage)")
  stage0_epochs: int = _field(0, "epochs of stage 0 (id-embedding DUET); 0 = epochs")
  stage1_epochs: int = _field(0, "epochs of stage 1 (semantic metacode); 0 = epochs")
  batch_size: int = _field(
    1024,
    "training batch size: rows (sequences with --objective="
    "positions); the last batch is padded with weight 0",
  )
  eval_batch_size: int = _field(8192, "rows per evaluation batch")
  lr: float = _field(1e-3, "Adam learning rate")
  group_candidates: bool = _field(
    True,
    "train on whole candidate groups (a positive and its "
    "negatives share one history, encoded once per group); a batch "
    "then holds round(batch_size / (1 + train_negatives)) groups",
  )
  select_on: str = _field(
    "valid",
    "split whose --select_metric selects the epoch; 'test' only to "
    "compare with the authors' protocol (optimistic)",
    choices=SELECT_ON,
  )
  select_metric: str = _field(
    "full:ndcg@10",
    "metric that selects the epoch (higher is better): "
    "'full:<m>' (full-catalogue ranking, e.g. full:ndcg@10) or "
    "'sampled:<m>' (e.g. sampled:uauc, the SOLID paper's choice)",
  )
  eval_protocol: str = _field(
    "both",
    "what each epoch evaluates: the sampled candidates (1 + "
    "eval_negatives), the full catalogue, or both",
    choices=EVAL_PROTOCOLS,
  )
  full_eval_users: int = _field(
    0,
    "rank the full catalogue for a fixed random sample of this many users of "
    "each split (the same users in valid and test and in every epoch, drawn "
    "from --seed); 0 = every user",
  )
  valid_full_users: int = _field(
    0,
    "rank the full catalogue of the validation split (epoch selection and "
    "early stopping) for a fixed random sample of this many users instead; "
    "the test split keeps --full_eval_users; 0 = as --full_eval_users",
  )
  patience: int = _field(
    0,
    "stop a stage after this many epochs without improvement of the "
    "selection metric (0: always train --epochs epochs)",
  )
  stop_rule: str = _field(
    "select",
    "what resets --patience: 'select' (an improvement of the "
    "selection metric) or 'any' (of any metric of its protocol over the last "
    "improving epoch)",
    choices=STOP_RULES,
  )
  objective: str = _field(
    "rows",
    "training rows: 'rows' (one row per target with its <= L "
    "previous items, the SOLID paper's) or 'positions' (one row per user, "
    "every position of its last L training events predicts the next item, "
    "as SASRec; causal SASRec and GRU4Rec only) or 'cloze' (BERT4Rec's "
    "masked items: one row per user, a share --mask_rate of its items "
    "replaced by [MASK] and predicted; the state is read at a [MASK] "
    "after the history; static BERT4Rec only)",
    choices=OBJECTIVES,
  )
  mask_rate: float = _field(0.2, "share of the items masked per row with --objective=cloze")
  pack_sequences: bool = _field(
    False,
    "with --objective=positions, lay the users of a batch end "
    "to end in rows of seq_len slots, attention kept within a user "
    "(the same users and loss; far fewer padding slots on short "
    "histories). Stages whose model cannot take packed rows (a backbone "
    "that is not positionwise, e.g. DIN) train unpacked",
  )
  embedding_optimizer: str = _field(
    "adam",
    "update of the item embedding table: adam (dense, as every other leaf), adagrad or "
    "sgd (optax, dense), rowwise_adam (only the rows a batch looks up are read and "
    "written: the cost scales with the batch, not the catalogue)",
    choices=EMBEDDING_OPTIMIZERS,
  )
  embedding_lr: float = _field(0.0, "learning rate of the item table (0: --lr); not with adam")
  weight_decay: float = _field(
    0.0, "decoupled weight decay (AdamW) on the trainable parameters; 0 = Adam"
  )
  grad_clip_norm: float = _field(0.0, "clip the gradient to this global L2 norm (0 = off)")
  dropout_embedding: float = _field(0.0, "dropout after the sequence embedding (training only)")
  dropout_hidden: float = _field(
    0.0, "dropout of the transformer's attention and feed-forward outputs (training only)"
  )
  dropout_attention: float = _field(0.0, "dropout of the attention probabilities (training only)")

  # Bookkeeping.
  checkpoint_every_steps: int = _field(
    0, "also checkpoint every N optimizer steps within an epoch (0 = only at the end of each epoch)"
  )
  check_every_steps: int = _field(
    50, "check the loss for NaN/inf every N steps (and before every checkpoint)"
  )
  prefetch: int = _field(2, "batches transferred to the device ahead of the step")
  data_parallel: bool = _field(
    True,
    "split every batch over all devices when there are several "
    "(all local devices, and those of every process of a multi-host "
    "run); the batches, steps and losses stay those of one device",
  )
  save_scores: bool = _field(
    False,
    "also save the raw sampled candidate scores of the selected epoch next to its per-user metrics",
  )
  progress: bool = _field(True, "progress bar (only when stderr is a terminal)")
  tensorboard: bool = _field(True, "write TensorBoard event files when tensorboardX is installed")

  def __post_init__(self):
    def check(name, allowed):
      value = getattr(self, name)
      if value not in allowed:
        raise ValueError(f"TrainConfig.{name}={value!r}; expected one of {allowed}")

    import solid_jax.models  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from solid_jax import plugins  # pylint: disable=import-outside-toplevel

    plugins.load(self.plugins)
    check("method", METHODS.names())
    check("backbone", BACKBONES.names())
    check("codebook", model_configs.CODEBOOK_MODES)
    check("semantics", SEMANTIC_SOURCES)
    check("select_on", SELECT_ON)
    check("eval_protocol", EVAL_PROTOCOLS)
    check("objective", OBJECTIVES)
    check("stop_rule", STOP_RULES)
    check("embedding_optimizer", EMBEDDING_OPTIMIZERS)
    if self.embedding_lr < 0 or (self.embedding_lr and self.embedding_optimizer == "adam"):
      raise ValueError(
        f"TrainConfig.embedding_lr={self.embedding_lr} must be >= 0, and 0 with "
        "embedding_optimizer='adam'"
      )
    protocol, _ = parse_select_metric(self.select_metric)
    if self.eval_protocol not in (protocol, "both"):
      raise ValueError(
        f"TrainConfig.select_metric={self.select_metric!r} needs the {protocol} "
        f"protocol, but eval_protocol={self.eval_protocol!r}"
      )
    probe = model_configs.ModelConfig(
      backbone=self.backbone, head="static", num_items=2, causal=self.causal, num_heads=1
    )
    if self.objective == "positions" and not probe.positionwise:
      raise ValueError(
        f"TrainConfig.objective='positions' needs a causal backbone (gru4rec, or "
        f"sasrec with causal=True), not backbone={self.backbone!r} "
        f"causal={self.causal}"
      )
    if self.objective == "cloze" and (
      not BACKBONES[self.backbone].supports_cloze or METHODS[self.method]["head"] != "static"
    ):
      raise ValueError(
        f"TrainConfig.objective='cloze' trains BERT4Rec with the static head, not "
        f"backbone={self.backbone!r} method={self.method!r}"
      )
    if not 0.0 < self.mask_rate <= 1.0:
      raise ValueError(f"TrainConfig.mask_rate={self.mask_rate} must be in (0, 1]")
    if self.pack_sequences and self.objective not in ("positions", "cloze"):
      raise ValueError(
        "TrainConfig.pack_sequences=True packs the rows of --objective=positions "
        "or cloze, "
        f"not objective={self.objective!r}"
      )
    try:
      widths = self.din_widths
    except ValueError:
      widths = ()
    if not widths or min(widths) < 1:
      raise ValueError(f"TrainConfig.din_hidden={self.din_hidden!r}: expected widths like '128,64'")
    if self.num_codes == 1 or self.num_codes < 0:
      raise ValueError(f"TrainConfig.num_codes={self.num_codes}: 0 (the metacode's size) or >= 2")
    for bound, names in _INTEGER_LOWER_BOUNDS.items():
      for name in names:
        if getattr(self, name) < bound:
          raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= {bound}")
    for name in ("weight_decay", "grad_clip_norm"):
      if getattr(self, name) < 0:
        raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 0")
    if not self.lr > 0:
      raise ValueError(f"TrainConfig.lr={self.lr} must be > 0")

  # -- derived ------------------------------------------------------------------------------------

  @property
  def din_widths(self) -> tuple[int, ...]:
    """``din_hidden`` as a tuple of ints."""
    return tuple(int(w) for w in self.din_hidden.split(",") if w.strip())

  @property
  def is_solid(self) -> bool:
    """Whether the method trains SOLID's stages (its head is ``"solid"``)."""
    return METHODS[self.method]["head"] == "solid"

  @property
  def generator(self) -> str:
    """The generator family of the dynamic head ("duet" or "apg")."""
    return METHODS[self.method].get("generator", "duet")

  @property
  def needs_stage0(self) -> bool:
    """Whether semantic ids come from the item-id embeddings of a stage-0 DUET model."""
    return self.is_solid and self.semantics.startswith("id")

  def stages(self) -> tuple[str, ...]:
    """Stage names in training order; each is a sub-directory of the workdir."""
    if not self.is_solid:
      return ("main",)
    return (("stage0",) if self.needs_stage0 else ()) + ("stage1", "stage2")

  def epochs_of(self, stage: str) -> int:
    if stage == "stage0":
      return self.stage0_epochs or self.epochs
    if stage == "stage1":
      return self.stage1_epochs or self.epochs
    return self.epochs

  def model_config(
    self, stage: str, *, num_items: int, num_semantics: int
  ) -> model_configs.ModelConfig:
    """The ModelConfig of one stage.

    Args:
      stage: "stage0" (item-level DUET), "stage1" (the generator trained on semantic sequences:
        ``num_items = num_semantics``), "stage2" (the dual SOLID model) or "main" (the single
        stage of static / duet / apg).
      num_items: item vocabulary size incl. padding.
      num_semantics: semantic vocabulary size incl. padding.

    Returns:
      The frozen model configuration.
    """
    common = {name: getattr(self, name) for name in SHARED_MODEL_FIELDS}
    common["din_hidden"] = self.din_widths
    if stage == "stage0":
      return model_configs.ModelConfig(
        head="duet", num_items=num_items, num_semantics=num_semantics, **common
      )
    if stage == "stage1":
      return model_configs.ModelConfig(
        head=self.generator, num_items=num_semantics, num_semantics=num_semantics, **common
      )
    if stage == "stage2":
      return model_configs.ModelConfig(
        head="solid",
        generator=self.generator,
        num_items=num_items,
        num_semantics=num_semantics,
        num_codes=self.num_codes or None,
        **{name: getattr(self, name) for name in SOLID_MODEL_FIELDS},
        **common,
      )
    if stage == "main":
      if self.method == "static" and self.static_head_layers >= 0:
        common["head_layers"] = self.static_head_layers
      common["cloze"] = self.objective == "cloze"
      return model_configs.ModelConfig(
        **METHODS[self.method], num_items=num_items, num_semantics=num_semantics, **common
      )
    raise ValueError(f"unknown stage {stage!r}")

  # -- (de)serialisation --------------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"unknown TrainConfig fields: {unknown}")
    return cls(**values)


def config_differences(
  saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = RUNTIME_FIELDS
) -> list[str]:
  """Human-readable differences between two configuration dicts (``name: saved -> current``)."""
  defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
  out = []
  for name in sorted(set(saved) | set(current)):
    if name in ignore:
      continue
    # A field added after the run was saved holds its default there.
    a = saved.get(name, defaults.get(name, "<absent>"))
    b = current.get(name, "<absent>")
    if a != b:
      out.append(f"{name}: {a!r} -> {b!r}")
  return out
