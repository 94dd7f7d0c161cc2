"""The text tables of a launch (``summary_table``; ``population_table`` for a population) and the
selection label of a run."""

from __future__ import annotations

import math

import numpy as np
from typing import Any, Mapping


from solid_jax.model_config import RUNTIME_FIELDS
from solid_jax.train.train_config import TrainConfig


def selection_label(config: TrainConfig) -> str:
  """How the epoch was selected, e.g. "valid full:ndcg@10" or "test sampled:uauc (authors'...)"."""
  label = f"{config.select_on} {config.select_metric}"
  return label + (" (authors' protocol; optimistic)" if config.select_on == "test" else "")


_TABLE_COLUMNS = (
  ("valid", "uauc"),
  ("valid", "ndcg@10"),
  ("valid_full", "ndcg@10"),
  ("test", "auc"),
  ("test", "uauc"),
  ("test", "ndcg@10"),
  ("test", "hr@10"),
  ("test_full", "hr@10"),
  ("test_full", "ndcg@10"),
  ("test_full", "mrr"),
  ("test_full", "coverage@10"),
)


def _column_name(split: str, metric: str) -> str:
  protocol = "full" if split.endswith("_full") else "sampled"
  return f"{split.split('_')[0]} {protocol} {metric.upper()}"


def summary_table(results_by_method: Mapping[str, Mapping[str, Any]]) -> str:
  """A plain-text table of both protocols' metrics per method (static / DUET / SOLID rows ...).

  Args:
    results_by_method: method label -> results dict of ``run_experiment``.

  Returns:
    The table, one line per method: the selected epoch (and the last trained one), validation
    sampled UAUC / NDCG@10 and full NDCG@10, test sampled AUC / UAUC / NDCG@10 / HR@10 and full
    HR@10 / NDCG@10 / MRR / Coverage@10, and the training minutes of all stages; "n/a" where a
    protocol was not evaluated.
  """
  head = ["method", "epoch"] + [_column_name(s, m) for s, m in _TABLE_COLUMNS] + ["train min"]
  rows = []
  selections = set()
  for label, res in results_by_method.items():
    selections.add(res.get("selection", "valid"))
    epoch = str(res.get("selected_epoch", ""))
    if "stopped_epoch" in res:
      epoch += f"/{res['stopped_epoch']}"
    cells = [str(label), epoch]
    cells += [_fmt((res.get(split) or {}).get(m)) for split, m in _TABLE_COLUMNS]
    cells.append(_fmt(res.get("train_seconds", float("nan")) / 60, 2))
    rows.append(cells)
  widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
  line = lambda cells: "  ".join(
    c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
  )
  out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
  out.append(
    f"epoch (selected/last trained) selected on: {', '.join(sorted(selections))}; "
    "sampled = 1 positive + sampled negatives, full = every item ranked, history excluded"
  )
  return "\n".join(out)


def _fmt(value, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  return f"{value:.{digits}f}"


def population_table(members: list[tuple[TrainConfig, str]], results: list[dict[str, Any]]) -> str:
  """One line per member (seed, lr, the run-time fields the members vary in, test metrics), then
  the mean +- std over the seeds of every hyperparameter combination."""
  keys = [("test_full", "ndcg@10"), ("test_full", "hr@10"), ("test", "ndcg@10"), ("test", "uauc")]
  keys = [k for k in keys if all(k[0] in r for r in results)]
  fields = ["lr"] + [f for f in RUNTIME_FIELDS if len({getattr(c, f) for c, _ in members}) > 1]
  head = ["seed"] + fields + [f"{split}/{m}" for split, m in keys]
  combo = lambda c: tuple(f"{getattr(c, f):g}" for f in fields)
  rows = [
    [str(c.seed), *combo(c)] + [f"{r[split][m]:.4f}" for split, m in keys]
    for (c, _), r in zip(members, results)
  ]
  groups: dict[tuple[str, ...], list[list[float]]] = {}
  for (c, _), r in zip(members, results):
    groups.setdefault(combo(c), []).append([r[split][m] for split, m in keys])
  for values, group in groups.items():
    group = np.asarray(group, float)
    spread = group.std(0, ddof=1) if len(group) > 1 else 0 * group[0]
    rows.append(
      ["mean", *values] + [f"{mu:.4f}+-{sd:.4f}" for mu, sd in zip(group.mean(0), spread)]
    )
  widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
  return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in [head] + rows)
