"""What keeps a workdir whole on a shared cluster: one writer per workdir, and preemption.

- `WorkdirLock`: a launch holds ``DIR/.lock`` (an ``fcntl.flock`` on the file, which the kernel
  releases when the process dies, even by SIGKILL), with the holder's host, pid, start time and
  command written in it. A second launch fails at once with `WorkdirLockedError` naming the
  holder. A lock file whose flock is free was left by a process that died (or a reboot): it is
  taken over with a log line naming the old holder. ``flock`` is per host; on a filesystem shared
  by several hosts (NFS) a lock of another host that is still within its heartbeat is refused.
- `PreemptionWatch`: SIGTERM / SIGINT set a flag instead of killing the process; the training loop
  asks `PreemptionWatch.should_stop` at every step boundary, saves a checkpoint there and raises
  `Preempted`; the launcher exits with `PREEMPTED_EXIT_CODE`. With several processes the flag is
  agreed on (``multihost_utils.process_allgather``) every ``sync_every`` steps, so every process
  stops after the same step. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from absl import logging
import jax
import numpy as np

LOCK_FILE = ".lock"
# EX_TEMPFAIL (sysexits.h): a temporary failure, the job may be retried (relaunched).
PREEMPTED_EXIT_CODE = 75
# A lock of another host is stale when its heartbeat is older than this; the holder refreshes it
# every HEARTBEAT_S.
STALE_AFTER_S = 600.0
HEARTBEAT_S = 60.0


class WorkdirLockedError(RuntimeError):
  """Another live launch holds the workdir."""


class Preempted(Exception):
  """Training stopped on SIGTERM / SIGINT after saving a checkpoint (relaunch to resume)."""


def _holder_text(info: dict[str, Any]) -> str:
  return (
    f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started "
    f"{info.get('started', '?')}, command: {info.get('command', '?')}"
  )


class WorkdirLock:
  """An exclusive lock of one workdir for the life of a launch (a context manager).

  Args:
    workdir: the directory (must exist).
    command: what to record as the holder's command (default: this process's argv).
  """

  def __init__(self, workdir: str, command: str | None = None):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.command = command if command is not None else " ".join(sys.argv)
    self._fd: int | None = None
    self._info: dict[str, Any] = {}
    self._stop = threading.Event()
    self._beat: threading.Thread | None = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirLockedError(
        f"workdir {os.path.dirname(self.path)} is in use by another launch ("
        f"{_holder_text(self._read())}); wait for it to end or use another workdir"
      ) from None
    old = self._read_fd(fd)
    host = socket.gethostname()
    if old and old.get("host") not in (None, host):
      beat = float(old.get("heartbeat", 0.0))
      if time.time() - beat < STALE_AFTER_S:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise WorkdirLockedError(
          f"workdir {os.path.dirname(self.path)} is locked by another host ({_holder_text(old)}"
          f"; last heartbeat {time.time() - beat:.0f} s ago); if that launch is gone, delete "
          f"{self.path}"
        )
    if old:
      logging.warning(
        "workdir %s: taking over the stale lock of a launch that is gone (%s)",
        os.path.dirname(self.path),
        _holder_text(old),
      )
    self._fd = fd
    self._info = {
      "host": host,
      "pid": os.getpid(),
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": self.command,
      "heartbeat": time.time(),
    }
    self._write(self._info)
    self._stop.clear()
    self._beat = threading.Thread(target=self._heartbeat, name="workdir-lock", daemon=True)
    self._beat.start()
    return self

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self._write({**self._info, "heartbeat": time.time()})
      except (OSError, TypeError):
        return

  def release(self) -> None:
    if self._fd is None:
      return
    self._stop.set()
    if self._beat is not None:
      self._beat.join()
      self._beat = None
    try:
      os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly, nothing to take over
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    finally:
      os.close(self._fd)
      self._fd = None

  def _write(self, info: dict[str, Any]) -> None:
    data = json.dumps(info).encode()
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, data, 0)
    os.fsync(self._fd)

  def _read(self) -> dict[str, Any]:
    try:
      with open(self.path, "rb") as f:
        return _parse(f.read())
    except OSError:
      return {}

  @staticmethod
  def _read_fd(fd: int) -> dict[str, Any]:
    return _parse(os.pread(fd, 1 << 16, 0))

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _parse(data: bytes) -> dict[str, Any]:
  try:
    info = json.loads(data.decode() or "{}")
  except (UnicodeDecodeError, json.JSONDecodeError):
    return {"command": "<unreadable lock file>"}
  return info if isinstance(info, dict) else {}


class PreemptionWatch:
  """SIGTERM / SIGINT -> a flag the training loop polls at step boundaries.

  Use as a context manager around training (the previous handlers come back on exit). Outside
  the main thread signals cannot be caught; the watch then never fires.

  Args:
    sync_every: with several processes, agree on the flag every this many steps.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, sync_every: int = 50):
    self.sync_every = max(1, int(sync_every))
    self.received: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    self.received = signum
    logging.warning(
      "received %s: saving a checkpoint at the next step boundary, then exiting "
      "(relaunch the same command to resume)",
      signal.Signals(signum).name,
    )

  def __enter__(self) -> "PreemptionWatch":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def should_stop(self, step: int) -> bool:
    """Whether to stop after global step ``step`` (the same answer on every process)."""
    if jax.process_count() == 1:
      return self.received is not None
    if step % self.sync_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    return bool(np.any(flags))
