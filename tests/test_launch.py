"""The TPU launcher: the dry run shows detached training and preemption recovery; the job script
it writes runs here on two "hosts" (two processes on 127.0.0.1, a fake gcloud on PATH that
records its calls) through a start, a preemption (both killed mid-run) and the resume."""

import base64
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from conftest import coordinator_port
import pytest

REPO = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(REPO, "experiments"))

import launch_tpu  # noqa: E402  pylint: disable=wrong-import-position
import tpu_host  # noqa: E402  pylint: disable=wrong-import-position

COMMON = ["--tpu=pe-sweep", "--zone=us-central2-b", "--type=v4-8", "--project=my-proj",
          "--workdir_root=gs://bkt/sweep"]


def test_dry_run_shows_recovery_detached_training_and_the_shipped_tree(capsys):
  lines = launch_tpu.main(["launch", *COMMON, "--spot", "--config=configs/lm_default.py",
                           "--encodings=rope,learned", "--steps=2000", "--ship_local",
                           "--dry_run"])
  printed = capsys.readouterr().out
  where = "--zone=us-central2-b --project=my-proj"
  assert f"gcloud compute tpus tpu-vm describe pe-sweep {where} '--format=value(state)'" in printed
  assert "PREEMPTED/TERMINATED/SUSPENDED VM is deleted and recreated" in printed
  assert lines[0] == f"gcloud compute tpus tpu-vm delete pe-sweep {where} --quiet"
  assert lines[1] == (f"gcloud compute tpus tpu-vm create pe-sweep {where} "
                      "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base --spot")
  assert lines[2].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in lines[2]
  assert "tar xzf xformer_src.tar.gz" in lines[3] and "-c constraints.txt" in lines[3]
  assert "--worker=0" in lines[4] and "xformer.data.prepare" in lines[4]
  assert "gcloud storage rsync -r ~/xformer_data gs://bkt/sweep/data" in lines[4]
  check = shlex.split(lines[5])[-1]  # Every host checks its chips before training.
  assert "--worker=all" in lines[5] and "xformer.selfcheck --config=configs/lm_default.py" in check
  assert "gs://bkt/sweep/selfcheck/" in check and check.endswith("exit $status")
  remote = shlex.split(lines[6])[-1]
  assert "--worker=all" in lines[6] and remote.endswith("< /dev/null &")
  assert "setsid nohup bash ~/xformer_job.sh" in remote
  script = base64.b64decode(re.search(r"echo (\S+) \| base64 -d", remote).group(1)).decode()
  assert "gcloud storage rsync -r gs://bkt/sweep/data ~/xformer_data" in script
  assert "--workdir=gs://bkt/sweep/rope/seed0" in script
  assert "--workdir=gs://bkt/sweep/learned/seed0" in script and "--config.model.max_len=128" in script


def test_queued_resources_status_logs_collect_and_refusals(capsys):
  state = launch_tpu.build_commands(launch_tpu.parse_args(
      ["launch", *COMMON, "--queued", "--spot", "--stages=create"]), "SUSPENDED")
  assert [shlex.join(c) for _, c in state] == [
      "gcloud compute tpus queued-resources delete pe-sweep --zone=us-central2-b "
      "--project=my-proj --force --quiet",
      "gcloud compute tpus queued-resources create pe-sweep --zone=us-central2-b "
      "--project=my-proj --node-id=pe-sweep --accelerator-type=v4-8 "
      "--runtime-version=tpu-ubuntu2204-base --spot"]
  restart = launch_tpu.parse_args(["launch", *COMMON, "--restart"])
  stages = [stage for stage, _ in launch_tpu.build_commands(restart, "READY")]
  assert stages == ["setup", "prepare", "selfcheck", "selfcheck", "train"]  # Stop, then check.
  ready = launch_tpu.parse_args(["launch", *COMMON, "--stages=create"])
  assert launch_tpu.build_commands(ready, "READY") == []
  assert len(launch_tpu.build_commands(ready, None)) == 1  # Absent: create only.
  status = launch_tpu.main(["status", *COMMON, "--dry_run"])
  assert "pgrep -af" in status[1] and "--worker=all" in status[1]
  assert "tail -n 50" in launch_tpu.main(["logs", *COMMON, "--lines=50", "--dry_run"])[0]
  collect = launch_tpu.main(["collect", *COMMON, "--encodings=rope", "--seeds=2",
                             "--out=/tmp/res", "--dry_run"])
  assert collect == ["gcloud storage cp -r gs://bkt/sweep/rope/seed0 /tmp/res/rope/",
                     "gcloud storage cp -r gs://bkt/sweep/rope/seed1 /tmp/res/rope/"]
  with pytest.raises(ValueError, match="must be a gs:// bucket"):
    launch_tpu.main(["launch", "--tpu=t", "--zone=z", "--workdir_root=/tmp/x", "--dry_run"])
  with pytest.raises(SystemExit):
    launch_tpu.main(["launch", *COMMON, "--stages=create,launch", "--dry_run"])
  capsys.readouterr()


FAKE_GCLOUD = """#!/usr/bin/env bash
# Records its calls; `storage rsync|cp SRC DST` copies like the real one, gs://bkt = $FAKE_GCS.
echo "$*" >> "$FAKE_GCLOUD_LOG"
map() { echo "${1/gs:\\/\\/bkt/$FAKE_GCS}"; }
if [ "$1 $2 $3 $5" = "compute tpus tpu-vm describe" ] || [ "$4" = describe ]; then
  echo "${FAKE_STATE:-READY}"; exit 0
fi
if [ "$4" = ssh ]; then  # Runs the --command here, as every worker would.
  for a in "$@"; do case "$a" in --command=*) exec bash -c "${a#--command=}";; esac; done
fi
if [ "$1" = storage ]; then
  src=$(map "${@: -2:1}"); dst=$(map "${@: -1}")
  mkdir -p "$(dirname "$dst")"
  if [ "$2" = rsync ]; then mkdir -p "$dst"; cp -r "$src/." "$dst/"; else cp -r "$src" "$dst"; fi
fi
"""


def _host_env(tmp_path, port, pid):
  return {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HOME":
          str(tmp_path / f"home{pid}"), "FAKE_GCS": str(tmp_path / "gcs"),
          "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log"), "JAX_PLATFORMS": "cpu",
          "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
          "JAX_PROCESS_ID": str(pid), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


@pytest.mark.slow
def test_job_script_runs_on_two_hosts_survives_preemption_and_resumes(small_files, tmp_path):
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "gcloud").write_text(FAKE_GCLOUD)
  (tmp_path / "bin" / "gcloud").chmod(0o755)
  workdir = str(tmp_path / "gcs" / "run")  # The "bucket" the runs share, as gs:// would be.
  flags = ["--config=configs/default.py", "--config.data.dataset=parallel_files",
           f"--config.data.files={small_files['files']}", "--config.data.max_source_len=32",
           "--config.data.max_target_len=32", "--config.tokenizer.vocab_size=400",
           f"--config.tokenizer.cache_dir={tmp_path / 'gcs' / 'tokenizers'}",
           "--config.model.d_model=32", "--config.model.num_heads=2", "--config.model.d_ff=64",
           "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
           "--config.model.max_len=64", "--config.batch_size=8", "--config.num_train_steps=100",
           "--config.checkpoint_every_steps=20", "--config.log_every_steps=10",
           "--config.eval_every_steps=100000", "--config.eval_examples=20",
           "--config.test_bleu_examples=-1", "--config.num_samples_to_print=0"]
  data = tmp_path / "gcs" / "data"  # The prepared dataset in the shared bucket.
  data.mkdir(parents=True)
  script = tpu_host.job_script([("run", workdir, flags)], repo_dir=os.path.abspath(REPO),
                               shared_data="gs://bkt/data", python=sys.executable)
  (tmp_path / "job.sh").write_text(script)

  def start(port):
    return [subprocess.Popen(["setsid", "bash", str(tmp_path / "job.sh")],
                             env=_host_env(tmp_path, port, pid)) for pid in range(2)]

  with coordinator_port() as port:
    _preempt_and_relaunch(start, port, tmp_path)
  calls = (tmp_path / "gcloud.log").read_text().splitlines()
  assert sum(c.startswith("storage rsync -r gs://bkt/data") for c in calls) == 4  # 2 hosts x 2
  assert any(c.startswith("storage cp") and "/run/logs/" in c for c in calls), calls


def _preempt_and_relaunch(start, port, tmp_path):
  """Both hosts killed once a checkpoint exists, then started again: the run resumes."""
  hosts = start(port)
  ckpts = tmp_path / "gcs" / "run" / "checkpoints"
  deadline = time.time() + 300
  while not (ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())):
    assert time.time() < deadline and all(h.poll() is None for h in hosts), "no checkpoint"
    time.sleep(0.5)
  for h in hosts:  # Preemption: the VM goes away, processes and all, without warning.
    os.killpg(h.pid, signal.SIGKILL)
    h.wait()
  saved = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  assert 0 < saved < 100
  hosts = start(port)  # The relaunch writes and starts the same script.
  for h in hosts:
    assert h.wait(timeout=600) == 0
  log = (tmp_path / "home0" / "xformer_logs" / "run.log").read_text()
  assert log.count("start ") == 2 and "exit 0" in log
  assert f"Resuming from step {saved}" in log or f"Training steps {saved}..100" in log, log[-3000:]
  assert "Done in" in log


def _fake_gcloud(tmp_path, monkeypatch):
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "gcloud").write_text(FAKE_GCLOUD)
  (tmp_path / "bin" / "gcloud").chmod(0o755)
  monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.setenv("FAKE_GCS", str(tmp_path / "gcs"))
  monkeypatch.setenv("FAKE_GCLOUD_LOG", str(tmp_path / "gcloud.log"))
  monkeypatch.setenv("FAKE_STATE", "READY")
  return lambda: (tmp_path / "gcloud.log").read_text().splitlines()


def test_launch_on_a_vm_still_training_starts_no_second_copy(tmp_path, monkeypatch, capsys):
  calls = _fake_gcloud(tmp_path, monkeypatch)
  (tmp_path / "xformer_job.sh").write_text("sleep 300\n")  # A job still training.
  job = subprocess.Popen(["setsid", "bash", str(tmp_path / "xformer_job.sh")])
  try:
    assert launch_tpu.main(["launch", *COMMON, "--steps=10"]) == []
    out = capsys.readouterr().out
    assert "is still training (1 host(s)" in out and str(job.pid) in out, out
    assert "--restart" in out and job.poll() is None
    # Nothing but the questions: no setup (it would replace the job's code), prepare or train.
    assert len(calls()) == 2 and "describe" in calls()[0] and "pgrep" in calls()[1], calls()
    # --restart: SIGTERM to the job's process group, waited for, then the new job starts.
    launch_tpu.main(["launch", *COMMON, "--steps=10", "--stages=create,train", "--restart"])
    assert job.wait(timeout=60) == -signal.SIGTERM
    started = [c for c in calls()[2:] if "ssh" in c]
    assert "kill -TERM" in started[0] and "setsid nohup" in started[1], started
  finally:
    if job.poll() is None:
      job.kill()
  # A VM that is idle (or was just recreated): the job starts as before. (The job just
  # started here fails at once, having no code to run; wait until it and the shell that
  # started it are gone: twice in a row no process names the script.)
  deadline, idle = time.time() + 60, 0
  while idle < 2:
    assert time.time() < deadline
    running = subprocess.run(["pgrep", "-f", "[x]former_job.sh"], capture_output=True,
                             check=False).returncode == 0
    idle = 0 if running else idle + 1
    time.sleep(0.2)
  lines = launch_tpu.main(["launch", *COMMON, "--steps=10", "--stages=create,train"])
  assert len(lines) == 1 and "setsid nohup" in lines[0]
  capsys.readouterr()
