"""One writer per run (xformer/workdir/lease.py): a live holder keeps the workdir, a dead one is
taken over with a warning, --force_takeover takes it anyway, and a run taken over stops."""

import json
import os
import socket
import subprocess
import sys
import time

from conftest import main_command
import pytest

from xformer.workdir import lease


def _holder(workdir, **changes):
  """A lease written as another process would have written it."""
  record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time() - 60,
            "heartbeat": time.time(), "token": "other", **changes}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, lease.NAME), "w") as f:
    json.dump(record, f)


def test_a_live_holder_keeps_the_workdir_and_is_named(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _holder(str(tmp_path), pid=sleeper.pid)
    with pytest.raises(lease.LeaseHeldError, match=rf"pid {sleeper.pid} on "
                       rf"{socket.gethostname()}, since .*--force_takeover"):
      lease.acquire(str(tmp_path), say=print)
  finally:
    sleeper.kill()
    sleeper.wait()


def test_a_dead_holder_is_taken_over_with_a_warning(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _holder(str(tmp_path), pid=dead.pid)
  said = []
  held = lease.acquire(str(tmp_path), say=said.append)
  assert len(said) == 1 and f"process {dead.pid} on this host is gone" in said[0]
  with open(tmp_path / lease.NAME) as f:
    assert json.load(f)["pid"] == os.getpid()
  held.release()
  assert not (tmp_path / lease.NAME).exists()


def test_a_holder_elsewhere_with_an_old_heartbeat_is_stale(tmp_path):
  _holder(str(tmp_path), host="another-host", heartbeat=time.time() - 3600)
  said = []
  lease.acquire(str(tmp_path), timeout_s=600, say=said.append).release()
  assert "no heartbeat for 3600 s" in said[0]
  _holder(str(tmp_path), host="another-host", heartbeat=time.time() - 10)
  with pytest.raises(lease.LeaseHeldError, match="another-host"):
    lease.acquire(str(tmp_path), timeout_s=600)


def test_force_takes_over_and_the_old_holder_stops_at_its_next_check(tmp_path):
  first = lease.acquire(str(tmp_path), heartbeat_s=3600)
  first.check()
  second = lease.acquire(str(tmp_path), force=True, say=print)  # Our own pid is alive.
  first.refresh()  # Its heartbeat finds the lease gone to another token...
  with pytest.raises(lease.LeaseLostError, match="taken over by pid"):
    first.check()  # ...and the training loop stops at its next step.
  first.release()  # Releasing a lost lease leaves the new holder's alone.
  assert (tmp_path / lease.NAME).exists()
  second.release()


def test_heartbeats_move_forward(tmp_path):
  held = lease.acquire(str(tmp_path), heartbeat_s=0.05)
  with open(tmp_path / lease.NAME) as f:
    first = json.load(f)["heartbeat"]
  time.sleep(0.3)
  with open(tmp_path / lease.NAME) as f:
    assert json.load(f)["heartbeat"] > first
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
