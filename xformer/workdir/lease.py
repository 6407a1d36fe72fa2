"""One writer per run: the lease process 0 of a training run holds on its workdir.

`<workdir>/lease.json` records who writes the run (host, pid, start, last heartbeat, a token).
`acquire` takes it before anything else is written; a second run on the same workdir stops in
one line naming the holder, unless the lease is stale (its holder is gone: same host and the pid
has died, or no heartbeat for `timeout_s`) or `force` says to take it over. A thread refreshes
the heartbeat while training; if the lease is lost (taken over), `check` raises at the next step.

Every change is a compare-and-swap, never read-then-write: on a local disk under an exclusive
`flock` of `lease.lock`; on gs:// with the object store's generation preconditions (create only
if absent, replace only the generation that was read). `xformer.evaluate`, `.average` and
`xformer.load` only read a run and take no lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from xformer import errors

NAME = "lease.json"
TIMEOUT_S = 600.0  # A heartbeat older than this marks a dead holder on another host.
HEARTBEAT_S = 30.0


class LeaseHeldError(errors.UserError, RuntimeError):
  """Another live process holds the workdir's lease."""


class LeaseLostError(RuntimeError):
  """This run's lease was taken over while it trained."""


@dataclasses.dataclass(frozen=True)
class Record:
  host: str
  pid: int
  started: float
  heartbeat: float
  token: str

  def describe(self) -> str:
    when = lambda t: datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    return (f"pid {self.pid} on {self.host}, since {when(self.started)}, last heartbeat "
            f"{time.time() - self.heartbeat:.0f} s ago")

  def stale(self, timeout_s: float) -> str | None:
    """Why the holder is gone (None: it may be alive)."""
    if self.host == socket.gethostname() and not _pid_alive(self.pid):
      return f"its process {self.pid} on this host is gone"
    if time.time() - self.heartbeat > timeout_s:
      return f"no heartbeat for {time.time() - self.heartbeat:.0f} s (timeout {timeout_s:.0f} s)"
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Someone else's process: alive.
  return True


class _LocalStore:
  """lease.json on a local (or mounted) disk; changes under an exclusive flock."""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.path, self.lock_path = os.path.join(workdir, NAME), os.path.join(workdir, "lease.lock")

  @contextlib.contextmanager
  def locked(self) -> Iterator[None]:
    import fcntl  # pylint: disable=import-outside-toplevel
    with open(self.lock_path, "a") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        yield
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)

  def read(self) -> tuple[Record | None, Any]:
    try:
      with open(self.path) as f:
        record = Record(**json.load(f))
    except FileNotFoundError:
      return None, None
    return record, record.token

  def swap(self, expected: Any, record: Record | None) -> tuple[bool, Any]:
    """Replaces the lease if its version is still `expected` (None: absent); record None
    deletes it. Returns whether it did, and the new version."""
    with self.locked():
      if self.read()[1] != expected:
        return False, None
      if record is None:
        os.remove(self.path)
        return True, None
      tmp = f"{self.path}.{os.getpid()}"
      with open(tmp, "w") as f:
        json.dump(dataclasses.asdict(record), f)
      os.replace(tmp, self.path)
      return True, record.token


class _GcsStore:
  """gs://bucket/prefix/lease.json with generation preconditions (google-cloud-storage)."""

  def __init__(self, workdir: str):
    from google.cloud import storage  # pylint: disable=import-outside-toplevel
    bucket, _, prefix = workdir[len("gs://"):].partition("/")
    self.blob_name = f"{prefix.rstrip('/')}/{NAME}" if prefix else NAME
    self.bucket = storage.Client().bucket(bucket)

  def read(self) -> tuple[Record | None, Any]:
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    for _ in range(3):
      blob = self.bucket.get_blob(self.blob_name)
      if blob is None:
        return None, None
      try:  # The bytes of the generation whose number is returned, not a newer one's.
        data = blob.download_as_bytes(if_generation_match=blob.generation)
      except (exceptions.PreconditionFailed, exceptions.NotFound):
        continue  # Replaced or removed between the two requests: read again.
      return Record(**json.loads(data)), blob.generation
    raise OSError(f"{self.blob_name} kept changing while it was read")

  def swap(self, expected: Any, record: Record | None) -> tuple[bool, Any]:
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    blob = self.bucket.blob(self.blob_name)
    try:
      if record is None:
        blob.delete(if_generation_match=expected)
        return True, None
      # Generation 0: only if absent; else only the generation that was read.
      blob.upload_from_string(json.dumps(dataclasses.asdict(record)),
                              if_generation_match=0 if expected is None else expected)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      return False, None
    return True, blob.generation


def _store(workdir: str):
  return _GcsStore(workdir) if workdir.startswith("gs://") else _LocalStore(workdir)


class Lease:
  """The workdir's lease, held by this process (see the module docstring)."""

  def __init__(self, store, record: Record, version: Any, heartbeat_s: float,
               say: Callable[[str], None]):
    self._store, self._record, self._version, self._say = store, record, version, say
    self._lost: str | None = None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                    name="xformer-lease")
    self._thread.start()

  def _beat(self, every_s: float) -> None:
    while not self._stop.wait(every_s):
      self.refresh()

  def refresh(self) -> None:
    """Writes a new heartbeat if the lease is still ours; else marks it lost."""
    record = dataclasses.replace(self._record, heartbeat=time.time())
    try:
      swapped, version = self._store.swap(self._version, record)
    except Exception as e:  # noqa: BLE001  # Transient: retry at the next beat.
      self._say(f"WARNING: could not refresh the workdir lease ({e}).")
      return
    if not swapped:
      holder = self._store.read()[0]
      self._lost = holder.describe() if holder else "nobody (the lease file was removed)"
      self._stop.set()
      return
    self._record, self._version = record, version

  def check(self) -> None:
    """Raises LeaseLostError if another process took the lease over."""
    if self._lost:
      raise LeaseLostError(f"This run's workdir lease was taken over by {self._lost}; stopping "
                           "without writing more (the other run owns the workdir now).")

  def release(self) -> None:
    self._stop.set()
    self._thread.join(timeout=5)
    if not self._lost:
      self._store.swap(self._version, None)


def acquire(workdir: str, *, force: bool = False, timeout_s: float = TIMEOUT_S,
            heartbeat_s: float = HEARTBEAT_S, say: Callable[[str], None] = print) -> Lease:
  """Takes `workdir`'s lease for this process, or raises LeaseHeldError naming the holder."""
  try:
    return _acquire(_store(workdir), workdir, force, timeout_s, heartbeat_s, say)
  except OSError as e:
    raise errors.WorkdirError.unwritable(workdir, e) from e


def _acquire(store, workdir: str, force: bool, timeout_s: float, heartbeat_s: float,
             say: Callable[[str], None]) -> Lease:
  now = time.time()
  mine = Record(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex)
  for _ in range(3):  # Another process may change the lease between our read and our swap.
    holder, version = store.read()
    if holder is not None:
      why = "--force_takeover" if force else holder.stale(timeout_s)
      if why is None:
        raise LeaseHeldError(
            f"{workdir} is being written by another run ({holder.describe()}). Wait for it to "
            f"finish, stop it, or take over with --force_takeover (a holder whose heartbeat is "
            f"older than {timeout_s:.0f} s is taken over by itself).")
      say(f"WARNING: taking over the workdir lease of {holder.describe()}: {why}.")
    swapped, new_version = store.swap(version, mine)
    if swapped:
      return Lease(store, mine, new_version, heartbeat_s, say)
  raise LeaseHeldError(f"{workdir}: the lease kept changing while it was taken; another run is "
                       "starting on this workdir.")
