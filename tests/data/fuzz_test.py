"""Hostile input, fuzzed (Hypothesis): every supported format gets mutated files; the loader either
returns a valid Dataset or raises DataError naming the file (and the line where there is one); it
never raises anything else and never hangs."""

import os
import shutil
import tempfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from solid_jax import data  # noqa: E402

# Tokens a hostile file may hold where an id, a timestamp, a rating or a feature is expected.
HOSTILE = [
  "",
  "-1",
  "-0",
  "nan",
  "NaN",
  "inf",
  "-inf",
  "1e400",
  "99999999999999999999999",
  "2147483648",
  "0x10",
  "１２",
  "\x00",
  "a\tb",
  "1.5",
  "None",
  "null",
  '"',
  "[",
  "{",
  "]",
]


def _mutate(raw: bytes, draw) -> bytes:
  kind = draw(
    st.sampled_from(
      ["truncate", "drop_field", "extra_field", "token", "bytes", "dup_header", "blank", "dup_line"]
    )
  )
  lines = raw.split(b"\n")
  i = draw(st.integers(0, max(0, len(lines) - 1)))
  if kind == "truncate":
    return raw[: draw(st.integers(0, len(raw)))]
  if kind == "bytes":
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\x00", b"\x80\x80"])) + raw[at:]
  if kind == "dup_header":
    return b"\n".join([lines[0]] + lines)
  if kind == "blank":
    lines.insert(i, b"")
    return b"\n".join(lines)
  if kind == "dup_line":
    lines.insert(i, lines[i])
    return b"\n".join(lines)
  sep = b"\t" if b"\t" in lines[i] else (b" " if b" " in lines[i] else b",")
  fields = lines[i].split(sep)
  j = draw(st.integers(0, max(0, len(fields) - 1)))
  if kind == "drop_field" and len(fields) > 1:
    del fields[j]
  elif kind == "extra_field":
    fields.insert(j, b"7")
  else:
    token = draw(st.sampled_from(HOSTILE)).encode()
    if fields:
      # Inside JSON the token replaces a number (or a whole value).
      fields[j] = token
  lines[i] = sep.join(fields)
  return b"\n".join(lines)


def _check(ds):
  assert ds.num_items >= 2 and ds.num_users >= 1
  assert np.all(ds.seq_items > 0) and np.all(ds.seq_items < ds.num_items)
  assert ds.item_semantic.shape[0] == ds.num_items
  assert np.all(np.diff(ds.seq_offsets) >= 0)
  for name, value in ds.side.items():
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
      assert np.all(np.isfinite(value)), name


def _fuzz(folder, draw):
  files = sorted(p for p in folder.rglob("*") if p.is_file())
  target = draw(st.sampled_from(files))
  with tempfile.TemporaryDirectory() as tmp:
    work = os.path.join(tmp, folder.name)
    shutil.copytree(folder, work)
    path = os.path.join(work, os.path.relpath(target, folder))
    raw = open(path, "rb").read()
    if "feat" in target.name:
      mutated = _mutate_features(raw, draw)
    else:
      mutated = _mutate(raw, draw)
    with open(path, "wb") as f:
      f.write(mutated)
    try:
      ds = data.load_dataset(work, use_cache=False)
    except data.DataError as e:
      assert e.path is not None or work in str(e) or os.path.basename(path) in str(e), str(e)
      return
    _check(ds)


def _mutate_features(raw, draw):
  """Raw float32 feature matrices (512 columns): NaN / inf rows, a row too few or too many, or a
  size that is not whole rows."""
  x = np.frombuffer(raw[: len(raw) - len(raw) % 4], dtype="<f4").copy()
  rows = max(1, x.size // 512)
  kind = draw(st.sampled_from(["nan", "inf", "fewer", "more", "ragged"]))
  if kind == "ragged":
    return raw[: draw(st.integers(0, len(raw) - 1))]
  if kind in ("nan", "inf"):
    r = draw(st.integers(0, rows - 1))
    x[r * 512 + draw(st.integers(0, 511))] = np.nan if kind == "nan" else -np.inf
  elif kind == "fewer":
    x = x[:-512]
  else:
    x = np.concatenate([x, x[:512]])
  return x.astype("<f4").tobytes()


def test_authors_files_load_or_raise_data_error(tmp_path):
  """The authors' ``user;target;trigger_seq;click_seq;label`` files, mutated."""
  good = b"1;2;0,0;3,4;1\n1;5;0,0;3,4;0\n2;7;0,1;0,6,8;1\n"

  @FUZZ
  @given(st.data())
  def run(d):
    path = tmp_path / "train.txt"
    path.write_bytes(_mutate(good, d.draw))
    try:
      rows = data.read_authors_file(str(path))
    except data.DataError as e:
      assert "train.txt" in str(e), str(e)
      return
    assert set(rows) >= {"items", "target", "label"}
    assert np.all(rows["items"] >= 0) and np.all(rows["target"] > 0)

  run()


FUZZ = settings(
  max_examples=int(os.environ.get("SOLID_JAX_FUZZ_EXAMPLES", "40")),
  deadline=10_000,
  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
  derandomize=True,
)


@pytest.mark.parametrize("fixture", ["recbole_dir", "s3rec_dir", "lcrec_dir", "unisrec_dir"])
def test_mutated_files_load_or_raise_data_error(fixture, request):
  folder = request.getfixturevalue(fixture)

  @FUZZ
  @given(st.data())
  def run(d):
    _fuzz(folder, d.draw)

  run()
