"""What runs on each TPU VM host: the job script of experiments/launch_tpu.py and the command
that starts it detached.

The script copies the shared, prepared dataset from gs:// to the host's disk (array_record is
read from local files), then trains each run in turn with `python3 -m xformer.main`, appending
to a log per run under `~/xformer_logs` and copying that log to `<workdir>/logs/<host>.log`
when the run ends. It is started with `setsid nohup`, so it belongs to no SSH session: the
laptop that launched it can sleep or disconnect. A preempted host loses the script with the VM;
the relaunch writes it again and every run resumes from its newest checkpoint in gs://.
"""

from __future__ import annotations

import base64
import shlex

LOG_DIR = "~/xformer_logs"
SCRIPT = "~/xformer_job.sh"
LOCAL_DATA = "~/xformer_data"  # Each host's copy of the prepared dataset (xformer expands ~).


def log_name(run: str) -> str:
  return run.replace("/", "_") + ".log"


def job_script(runs: list[tuple[str, str, list[str]]], *, repo_dir: str = "~/xformer",
               shared_data: str = "", local_data: str = LOCAL_DATA,
               python: str = "python3", gcloud: str = "gcloud") -> str:
  """The bash job of one host.

  Args:
    runs: (name, workdir, `xformer.main` flags without --workdir) of each run, in order.
    shared_data: gs:// directory of the prepared dataset ("" when the runs prepare their own).
    local_data: where the host keeps its copy (the runs' data.data_dir).
  """
  q = shlex.quote
  lines = ["#!/usr/bin/env bash", "# Written by experiments/launch_tpu.py; safe to rerun.",
           "set -u", f"mkdir -p {LOG_DIR}", f"cd {repo_dir}"]
  if shared_data:
    lines.append(f"mkdir -p {local_data} && {gcloud} storage rsync -r {q(shared_data)} "
                 f"{local_data} || {{ echo 'data copy failed' >> {LOG_DIR}/job.log; exit 1; }}")
  for name, workdir, flags in runs:
    log = f"{LOG_DIR}/{log_name(name)}"
    cmd = " ".join(q(f) for f in [python, "-m", "xformer.main", *flags, f"--workdir={workdir}"])
    lines += [f'echo "start $(date -u +%FT%TZ) on $(hostname)" >> {log}',
              f"{cmd} >> {log} 2>&1", "status=$?", f'echo "exit $status" >> {log}',
              f"{gcloud} storage cp {log} {q(workdir.rstrip('/') + '/logs/')}\"$(hostname).log\" "
              ">/dev/null 2>&1 || true",
              "if [ $status -ne 0 ]; then exit $status; fi"]
  return "\n".join(lines) + "\n"


def selfcheck_command(flags: list[str], json_dir: str, *, repo_dir: str = "~/xformer",
                      steps: int = 20, python: str = "python3", gcloud: str = "gcloud") -> str:
  """Every host: `xformer.selfcheck` on its chips (all hosts together: the all-reduce spans
  them), its JSON copied to `<json_dir>/<hostname>.json`; the exit status is the check's."""
  q = shlex.quote
  local = f"{LOG_DIR.replace('~', '$HOME', 1)}/selfcheck.json"  # (No ~ expansion in a flag.)
  cmd = " ".join(q(f) for f in [python, "-m", "xformer.selfcheck", *flags, f"--steps={steps}"])
  return (f"mkdir -p {LOG_DIR} && cd {repo_dir} && {cmd} --json={local}; status=$?; "
          f"{gcloud} storage cp {local} {q(json_dir.rstrip('/') + '/')}\"$(hostname).json\" "
          ">/dev/null 2>&1 || echo 'selfcheck JSON not copied'; exit $status")


def start_detached(script: str) -> str:
  """The remote command that writes `script` and starts it outside the SSH session."""
  blob = base64.b64encode(script.encode()).decode()
  return (f"mkdir -p {LOG_DIR} && echo {blob} | base64 -d > {SCRIPT} && "
          f"setsid nohup bash {SCRIPT} >> {LOG_DIR}/job.log 2>&1 < /dev/null &")


# The job script's processes, found by its name ([x]: the pattern does not match the shell that
# runs the search). Only jobs this launcher started: a run started by hand is the user's own.
_JOB = "'[x]former_job.sh'"
RUNNING_MARK = "xformer-job-running"


def running_command() -> str:
  """Prints `<host> xformer-job-running <pids>` on a host whose job script still runs."""
  return (f"pids=$(pgrep -f {_JOB} | tr '\\n' ' '); "
          f"if [ -n \"$pids\" ]; then echo \"$(hostname) {RUNNING_MARK} $pids\"; fi; true")


def stop_command(timeout_s: int = 600) -> str:
  """SIGTERM to each running job's process group (the script and its xformer.main, which saves
  a checkpoint, releases the workdir lease and exits), then waits up to `timeout_s` until no
  process of those groups is left (zombies aside: their parent reaps them, not us)."""
  return (f"groups=$(for p in $(pgrep -f {_JOB}); do ps -o pgid= $p; done | sort -u); "
          "for g in $groups; do kill -TERM -- -$g 2>/dev/null; done; "
          f"for i in $(seq {int(timeout_s)}); do left=; for g in $groups; do "
          "ps -o stat= -g $g | grep -qv '^Z' && left=1; done; [ -z \"$left\" ] && exit 0; sleep 1; done; "
          "echo 'the running job did not stop' >&2; exit 1")


def status_command() -> str:
  return (f"echo \"== $(hostname)\"; pgrep -af 'xformer.main' || echo 'no training process'; "
          f"tail -n 2 {LOG_DIR}/*.log 2>/dev/null || true")


def logs_command(lines: int) -> str:
  return f"tail -n {int(lines)} {LOG_DIR}/*.log"
