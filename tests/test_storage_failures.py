"""A run whose disk fills up stops at the next step with one line: the cause, the newest good
checkpoint and what a rerun does; the rerun on more space resumes from that step.

Where the test may mount a size-limited tmpfs (root, mount allowed) the filesystem is really
full; elsewhere ENOSPC is injected at orbax's save. The test's output says which ran.
"""

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess

from conftest import main_command, small_config
import orbax.checkpoint as ocp
import pytest

from xformer import errors, train

pytestmark = pytest.mark.slow  # Three runs of the command.

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAGE = 4096


@contextlib.contextmanager
def _tmpfs(path, size_bytes):
  """A tmpfs of `size_bytes` at `path`; None when this machine does not allow mounting."""
  os.makedirs(path)
  size = -(-size_bytes // PAGE) * PAGE
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, check=False).returncode == 0 if (
                               os.geteuid() == 0 and shutil.which("mount")) else False
  try:
    yield path if mounted else None
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(path)], check=False)


def _run(small_files, workdir, steps):
  return subprocess.run(main_command(small_files, workdir, steps, checkpoint_every=3), cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)


def test_a_full_disk_stops_the_run_with_its_cause_and_the_rerun_resumes(small_files, tmp_path):
  with _tmpfs(tmp_path / "disk", 256 << 20) as disk:
    if disk is None:
      pytest.skip("cannot mount a tmpfs here: test_injected_enospc_... covers the path")
    workdir = disk / "run"
    assert _run(small_files, workdir, 6).returncode == 0  # Checkpoints 3 and 6.
    one = sum(f.stat().st_size for f in (workdir / "checkpoints" / "6").rglob("*") if f.is_file())
    stat = os.statvfs(disk)
    filler = disk / "filler"  # The disk fills up: room for half a checkpoint is left.
    with open(filler, "wb") as f:
      os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize - one // 2)
    print(f"real full filesystem: a tmpfs with {one // 2} bytes free; a checkpoint is {one}")
    out = _run(small_files, workdir, 12)
    assert out.returncode == 1, out.stderr[-3000:]
    # One line with the cause, the newest good step and what a rerun does; no traceback (ours,
    # orbax's logged ones, tensorstore's callbacks into the closed event loop), no shutdown wall.
    said = re.findall(r"error: Saving checkpoint 9 failed: no space left on device \(writing "
                      r"\S+/checkpoints/9\)\. The newest complete checkpoint is step 6; rerunning "
                      r"the same command once that is fixed resumes from it", out.stderr)
    assert len(said) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "shutting down" not in out.stderr, out.stderr[-3000:]
    logged = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()
              if "train/loss" in line]
    assert logged[-1] >= 9 and logged[:6] == [1, 2, 3, 4, 5, 6]  # What was written stays.
    filler.unlink()  # More space.
    rerun = _run(small_files, workdir, 12)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed from step 6" in rerun.stdout + rerun.stderr
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [
        6, 9, 12]


def test_injected_enospc_at_orbax_stops_the_run_naming_the_step(small_files, tmp_path,
                                                                 monkeypatch):
  """The same path without a real full disk: orbax's save raises ENOSPC for step 6."""
  real = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 6:
      raise OSError(errno.ENOSPC, "No space left on device", "checkpoints/6")
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.StorageError) as failure:
    train.train_and_evaluate(small_config(small_files, num_train_steps=9), workdir)
  assert str(failure.value).startswith("Saving checkpoint 6 failed: no space left on device")
  assert "newest complete checkpoint is step 3" in str(failure.value)


def test_a_data_file_damaged_mid_run_stops_it_naming_the_file(small_files, tmp_path):
  """Records read lazily (data.pretokenize=False) from an array_record file damaged after the
  run started: exit 1 with one line naming the file and the record, no traceback; the
  checkpoint saved before stays complete."""
  data = {**small_files, "data_dir": str(tmp_path / "tfds")}  # A copy this test may damage.
  workdir = tmp_path / "run"
  lazy = ["--config.data.pretokenize=False"]
  first = subprocess.run(main_command(data, workdir, 3, checkpoint_every=3) + lazy, cwd=REPO,
                         capture_output=True, text=True, timeout=600, check=False)
  assert first.returncode == 0, first.stderr[-3000:]
  (shard,) = (tmp_path / "tfds").rglob("*-train.array_record-*")
  damaged = bytearray(shard.read_bytes())
  for i in range(len(damaged) // 8, len(damaged) - 4096):  # All but the head and the footer.
    damaged[i] ^= 0xFF
  shard.write_bytes(bytes(damaged))
  out = subprocess.run(main_command(data, workdir, 12, checkpoint_every=3) + lazy, cwd=REPO,
                       capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 1, out.stderr[-3000:]
  said = re.findall(r"error: Reading record \d+ of the 'train' split failed: .*\(file (\S+)\)\. "
                    r"The data file is damaged", out.stderr)
  assert said == [str(shard)], out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "Resumed from step 3" in out.stdout + out.stderr  # It failed mid-run, not at start.
  assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [3]
