"""Records of a training stage: absl logging, JSON lines and (optional) TensorBoard event files.

``DIR/<stage>/metrics.jsonl`` holds one JSON object per finished epoch. On resume the file is
rewritten from the history stored in the checkpoint, so it never holds an epoch that the restored
checkpoint does not know about (a run killed after writing a line but before its checkpoint was
complete would otherwise repeat that epoch with a duplicate line).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

from absl import logging


def json_safe(value):
  """Converts numpy scalars and non-finite floats to plain JSON values (NaN/inf -> strings)."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON to ``path`` through a temporary file and a rename (never half-written)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(json_safe(payload), f, indent=2, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class StageWriter:
  """Writes the per-epoch records of one stage.

  Args:
    directory: the stage directory.
    stage: stage name, used as the TensorBoard tag prefix and in log lines.
    history: records already known (from the restored checkpoint); ``metrics.jsonl`` is rewritten
      to hold exactly these before new ones are appended.
    tensorboard: write event files under ``directory/tensorboard`` when tensorboardX is installed.
    files: write ``metrics.jsonl`` and event files; False only logs the records (the processes
      other than process 0 of a multi-host run).
  """

  def __init__(
    self,
    directory: str,
    stage: str,
    history: Iterable[dict[str, Any]] = (),
    tensorboard: bool = True,
    files: bool = True,
  ):
    self.stage = stage
    self.path = os.path.join(directory, "metrics.jsonl")
    self.files = files
    self._tb = None
    if not files:
      return
    os.makedirs(directory, exist_ok=True)
    tmp = f"{self.path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      for record in history:
        f.write(json.dumps(json_safe(record), sort_keys=True) + "\n")
    os.replace(tmp, self.path)
    if tensorboard:
      try:  # Optional extra `tensorboard`: event files without TensorFlow (imported on demand).
        import tensorboardX  # pylint: disable=import-outside-toplevel
      except ImportError:
        logging.info("tensorboardX is not installed: no TensorBoard event files")
      else:
        self._tb = tensorboardX.SummaryWriter(os.path.join(directory, "tensorboard"))

  def write_epoch(self, record: dict[str, Any]) -> None:
    """Appends one epoch record (flat or one level of nesting) to every sink."""
    if self.files:
      with open(self.path, "a") as f:
        f.write(json.dumps(json_safe(record), sort_keys=True) + "\n")
        f.flush()
    parts = [f"{self.stage} epoch {record.get('epoch')}", f"step {record.get('step')}"]
    for key in ("train_loss", "samples_per_s", "seconds"):
      if key in record:
        parts.append(f"{key}={record[key]:.4g}")
    for split in ("valid", "valid_full", "test", "test_full"):
      if isinstance(record.get(split), dict):
        m = record[split]
        parts.append(
          f"{split} "
          + " ".join(f"{k}={m[k]:.4f}" for k in ("auc", "uauc", "ndcg@10", "hr@10") if k in m)
        )
    logging.info(" | ".join(parts))
    if self._tb is not None:
      step = int(record.get("step", 0))
      for key, value in _flatten(record).items():
        if key not in ("epoch", "step") and isinstance(value, (int, float)):
          self._tb.add_scalar(f"{self.stage}/{key}".replace("@", "_at_"), value, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in record.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out
