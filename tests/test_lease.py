"""One writer per run (xformer/workdir/lease.py): a live holder keeps the workdir, a dead one is
taken over with a warning, --force_takeover takes it anyway, and a run taken over stops; on a
local disk and on gs:// (the emulator of tests/gcs_emulator.py)."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

from conftest import main_command
import gcs_emulator
import pytest

from xformer.workdir import lease


class _Local:
  """A workdir on the local disk, its lease file read and written directly."""

  def __init__(self, tmp_path):
    self.path = str(tmp_path)

  def write(self, record):
    with open(os.path.join(self.path, lease.NAME), "w") as f:
      json.dump(record, f)

  def read(self):
    try:
      with open(os.path.join(self.path, lease.NAME)) as f:
        return json.load(f)
    except FileNotFoundError:
      return None


class _Gcs:
  """A gs:// workdir on the emulator (tests/gcs_emulator.py: generation preconditions as on
  Cloud Storage), its lease object read and written with google-cloud-storage directly."""

  def __init__(self, name):
    self.path, self.blob = f"gs://bkt/{name}", f"{name}/{lease.NAME}"
    self.bucket = gcs_emulator.bucket_client("bkt")

  def write(self, record):
    self.bucket.blob(self.blob).upload_from_string(json.dumps(record))

  def read(self):
    blob = self.bucket.get_blob(self.blob)
    return None if blob is None else json.loads(blob.download_as_bytes())


@pytest.fixture(scope="module")
def emulator():
  with gcs_emulator.serve("bkt"):
    yield


@pytest.fixture(params=["local", "gs"])
def workdir(request, tmp_path):
  if request.param == "local":
    return _Local(tmp_path)
  request.getfixturevalue("emulator")
  return _Gcs(request.node.name.replace("[", "_").rstrip("]"))


@pytest.fixture
def gcs_workdir(emulator, request):
  del emulator
  return _Gcs(request.node.name)


def _holder(workdir, **changes):
  """A lease written as another process would have written it."""
  workdir.write({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time() - 60,
                 "heartbeat": time.time(), "token": "other", **changes})


def test_the_emulator_refuses_a_second_create_only_write(gcs_workdir):
  """What the gs:// lease rests on: creating an object that exists fails (and the store says
  it did not swap); so does replacing a generation that is no longer the live one."""
  workdir = gcs_workdir
  google = pytest.importorskip("google.api_core.exceptions")
  record = lease.Record("h", 1, 0.0, 0.0, "t")
  text = json.dumps(dataclasses.asdict(record))
  workdir.bucket.blob(workdir.blob).upload_from_string(text, if_generation_match=0)
  with pytest.raises(google.PreconditionFailed):
    workdir.bucket.blob(workdir.blob).upload_from_string(text, if_generation_match=0)
  store = lease._store(workdir.path)  # pylint: disable=protected-access
  assert store.swap(None, record) == (False, None)
  old = store.read()[1]
  assert store.swap(old, record)[0] and not store.swap(old, record)[0]


def test_a_live_holder_keeps_the_workdir_and_is_named(workdir):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _holder(workdir, pid=sleeper.pid)
    with pytest.raises(lease.LeaseHeldError, match=rf"pid {sleeper.pid} on "
                       rf"{socket.gethostname()}, since .*--force_takeover"):
      lease.acquire(workdir.path, say=print)
  finally:
    sleeper.kill()
    sleeper.wait()


def test_a_dead_holder_is_taken_over_with_a_warning(workdir):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _holder(workdir, pid=dead.pid)
  said = []
  held = lease.acquire(workdir.path, say=said.append)
  assert len(said) == 1 and f"process {dead.pid} on this host is gone" in said[0]
  assert workdir.read()["pid"] == os.getpid()
  held.release()
  assert workdir.read() is None


def test_a_holder_elsewhere_with_an_old_heartbeat_is_stale(workdir):
  _holder(workdir, host="another-host", heartbeat=time.time() - 3600)
  said = []
  lease.acquire(workdir.path, timeout_s=600, say=said.append).release()
  assert "no heartbeat for 3600 s" in said[0]
  _holder(workdir, host="another-host", heartbeat=time.time() - 10)
  with pytest.raises(lease.LeaseHeldError, match="another-host"):
    lease.acquire(workdir.path, timeout_s=600)


def test_force_takes_over_and_the_old_holder_stops_at_its_next_check(workdir):
  first = lease.acquire(workdir.path, heartbeat_s=3600)
  first.check()
  second = lease.acquire(workdir.path, force=True, say=print)  # Our own pid is alive.
  first.refresh()  # Its heartbeat finds the lease gone to another token...
  with pytest.raises(lease.LeaseLostError, match="taken over by pid"):
    first.check()  # ...and the training loop stops at its next step.
  first.release()  # Releasing a lost lease leaves the new holder's alone.
  assert workdir.read() is not None
  second.release()
  assert workdir.read() is None


def test_heartbeats_move_forward(workdir):
  held = lease.acquire(workdir.path, heartbeat_s=0.05)
  first = workdir.read()["heartbeat"]
  deadline = time.time() + 10
  while workdir.read()["heartbeat"] == first and time.time() < deadline:
    time.sleep(0.05)
  assert workdir.read()["heartbeat"] > first
  held.release()


REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _command(small_files, workdir, steps):
  return main_command(small_files, workdir, steps, checkpoint_every=20)


def _wait_for(path, timeout=300):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert time.time() < deadline, f"{path} never appeared"
    time.sleep(0.2)


@pytest.mark.slow
def test_a_second_run_on_a_training_workdir_stops_at_once_and_the_first_is_whole(
    small_files, tmp_path):
  workdir = tmp_path / "run"
  first = subprocess.Popen(_command(small_files, workdir, 80), cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  _wait_for(workdir / "checkpoints")  # It holds the lease and has begun writing.
  started = time.time()
  second = subprocess.run(_command(small_files, workdir, 80), cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
  assert second.returncode == 2 and time.time() - started < 30, second.stderr[-2000:]
  assert f"pid {first.pid} on {socket.gethostname()}" in second.stderr
  assert second.stderr.strip().count("\n") == 0  # One line.
  out, _ = first.communicate(timeout=600)
  assert first.returncode == 0, out[-3000:]
  with open(workdir / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f if '"train/loss"' in line]
  assert steps == list(range(1, 81))  # One line per logged step: nobody else wrote.
  from xformer.workdir.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  ckpt = Checkpointer(str(workdir / "checkpoints"), read_only=True)
  assert ckpt.steps() == [40, 60, 80]
  for step in ckpt.steps():
    assert ckpt.restore_config(step)["num_train_steps"] == 80
  ckpt.close()
  assert not (workdir / lease.NAME).exists()  # Released at the end.


@pytest.mark.slow
def test_after_kill_9_the_rerun_takes_the_stale_lease_over_and_resumes(small_files, tmp_path):
  workdir = tmp_path / "run"
  first = subprocess.Popen(_command(small_files, workdir, 400), cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for(workdir / "checkpoints" / "20")
  first.kill()  # SIGKILL: the lease stays behind, its holder gone.
  first.wait()
  from xformer.workdir.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  ckpt = Checkpointer(str(workdir / "checkpoints"), read_only=True)
  last = max(ckpt.steps())
  ckpt.close()
  rerun = subprocess.run(_command(small_files, workdir, last + 10), cwd=REPO,
                         capture_output=True, text=True, timeout=600, check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  log = rerun.stdout + rerun.stderr
  assert f"taking over the workdir lease of pid {first.pid}" in log
  assert "is gone" in log, log[-3000:]
  assert f"Resumed from step {last}" in log, log[-3000:]
