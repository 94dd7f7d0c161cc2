"""Where the time of a compiled step goes: a profiler trace attributed to source functions.

`jax.profiler` records one event per executed XLA operation (a "thunk", named after its HLO
instruction, e.g. ``fusion.12``); the compiled HLO text maps every instruction (through its fused
computation) to the JAX operation that produced it and to the Python stack frame, i.e. the function
of ``solid_jax/nn`` or ``solid_jax/models`` that traced it. `op_time_by_source` joins the two.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import time
from typing import Callable

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = ")
_CALLS = re.compile(r"(?:calls|body|to_apply)=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_FILE_NAME = re.compile(r'^(\d+) "(.*)"$')
_FILE_LOC = re.compile(r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)")
_STACK = re.compile(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)")


def _parse_tables(lines):
  files, functions, locations, frames = {}, {}, {}, {}
  section = None
  for line in lines:
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    if section is None:
      continue
    if section in ("FileNames", "FunctionNames"):
      m = _FILE_NAME.match(line)
      if not m:
        section = None
        continue
      (files if section == "FileNames" else functions)[int(m.group(1))] = m.group(2)
    elif section == "FileLocations":
      m = _FILE_LOC.match(line)
      if not m:
        section = None
        continue
      locations[int(m.group(1))] = tuple(int(g) for g in m.group(2, 3, 4))
    else:
      m = _STACK.match(line)
      if not m:
        section = None
        continue
      frames[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
  return files, functions, locations, frames


def hlo_sources(hlo_text: str, package: str = "solid_jax") -> dict[str, dict]:
  """Maps every HLO instruction name to its origin.

  Args:
    hlo_text: ``compiled.as_text()``.
    package: the innermost stack frame inside this package (other than ``<package>/bench``) names
      the source function; when none is, the innermost frame does.

  Returns:
    {instruction name: {"op_name": JAX name stack, "source": "file.py:function", "line": int}}.
    Fusions and calls take the origin of their called computation's root (or first annotated)
    instruction.
  """
  lines = hlo_text.splitlines()
  files, functions, locations, frames = _parse_tables(lines)

  def source(frame_id):
    chosen, fid, seen = None, frame_id, set()
    while fid in frames and fid not in seen:
      seen.add(fid)
      loc_id, parent = frames[fid]
      file_id, func_id, line = locations.get(loc_id, (0, 0, 0))
      path = files.get(file_id, "?")
      if chosen is None:
        chosen = (path, functions.get(func_id, "?"), line)
      if f"{package}/" in path and f"{package}/bench" not in path:
        return os.path.basename(path) + ":" + functions.get(func_id, "?"), line
      fid = parent
    if chosen is None:
      return "?", 0
    return os.path.basename(chosen[0]) + ":" + chosen[1], chosen[2]

  own, calls, comp_meta = {}, {}, collections.defaultdict(list)
  computation = None
  for line in lines:
    m = _COMPUTATION.match(line)
    if m:
      computation = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m or computation is None:
      continue
    root, name = m.group(1) is not None, m.group(2)
    op = _OP_NAME.search(line)
    frame = _FRAME.search(line)
    if op:
      meta = {"op_name": op.group(1)}
      meta["source"], meta["line"] = source(int(frame.group(1))) if frame else ("?", 0)
      own[name] = meta
      comp_meta[computation].insert(0, meta) if root else comp_meta[computation].append(meta)
    called = _CALLS.findall(line)
    if called:
      calls[name] = called
  out = {}
  for name in set(own) | set(calls):
    if name in own:
      out[name] = own[name]
      continue
    for comp in calls[name]:
      if comp_meta.get(comp):
        out[name] = comp_meta[comp][0]
        break
  return out


def trace_op_times(trace_dir: str) -> dict[str, float]:
  """Total microseconds per XLA operation name in the newest perfetto trace under ``trace_dir``."""
  pattern = os.path.join(trace_dir, "**", "*perfetto_trace.json.gz")
  paths = sorted(glob.glob(pattern, recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no perfetto trace under {trace_dir}")
  with gzip.open(paths[-1], "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  totals = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      totals[e["name"]] += float(e["dur"])
  return dict(totals)


def op_time_by_source(
  run: Callable[[int], None],
  sync: Callable[[], None],
  hlo_text: str,
  trace_dir: str,
  *,
  steps: int = 10,
) -> dict:
  """Profiles ``steps`` steps and attributes the XLA operations' time to source functions.

  Args:
    run: ``run(n)`` issues n steps of the compiled function whose HLO is ``hlo_text``.
    sync: waits for the device.
    hlo_text: ``compiled.as_text()``.
    trace_dir: where the profiler writes its trace.
    steps: profiled steps (after one untimed warm-up step).

  Returns:
    {"wall_ms_per_step", "op_ms_per_step" (sum over operations), "by_source": {source: ms per step},
    "by_op": {instruction: {"ms", "source", "op_name"}} (the 25 largest)}.
  """
  import jax  # pylint: disable=import-outside-toplevel

  run(1)
  sync()
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  start = time.perf_counter()
  run(steps)
  sync()
  wall = time.perf_counter() - start
  jax.profiler.stop_trace()
  sources = hlo_sources(hlo_text)
  times = trace_op_times(trace_dir)
  by_source, by_op = collections.Counter(), {}
  for name, us in times.items():
    if name not in sources:
      continue
    ms = us / 1e3 / steps
    by_source[sources[name]["source"]] += ms
    by_op[name] = {"ms": ms, **sources[name]}
  top = dict(sorted(by_op.items(), key=lambda kv: -kv[1]["ms"])[:25])
  return {
    "wall_ms_per_step": wall * 1e3 / steps,
    "op_ms_per_step": sum(by_source.values()),
    "by_source": dict(by_source.most_common()),
    "by_op": top,
  }
