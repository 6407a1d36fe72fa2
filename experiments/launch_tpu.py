"""Launch a config or a positional-encoding sweep on a Cloud TPU VM with `gcloud`; it trains
detached, survives the launching machine going away, and a rerun recovers from preemption.

  python experiments/launch_tpu.py launch --tpu=xformer-v4 --zone=us-central2-b --type=v4-8 \
      --config=configs/wmt_base.py --encodings=sinusoidal,rope,alibi --steps=100000 \
      --workdir_root=gs://my-bucket/xformer/wmt_sweep --spot [--ship_local] [--dry_run]
  python experiments/launch_tpu.py status|logs|collect|delete --tpu=... --zone=... ...

`launch` runs the stages create, setup, prepare, selfcheck, train (`--stages` picks some):
  create   `describe` the VM (or queued resource, `--queued`): absent -> create; PREEMPTED,
           TERMINATED or SUSPENDED (a spot VM that was taken back) -> delete, then create;
           READY -> nothing. So rerunning the same command after a preemption recreates it.
  setup    install xformer on every host: the pushed `--commit` of `--repo`, or with
           `--ship_local` the local working tree (tracked and untracked files) as a tarball
           over scp, so an encoding written locally but not pushed can be launched.
  prepare  worker 0 only: the dataset prepared once (`xformer.data.prepare`) and copied to
           `<workdir_root>/data`, the tokenizer trained once into `<workdir_root>/tokenizers`.
  selfcheck  every host runs `xformer.selfcheck` on the config (its train step timed on its
           chips, numerics against references, an all-reduce over every host; the cost model's
           estimate beside the measured time) and its JSON goes to
           `<workdir_root>/selfcheck/<host>.json`; a failed check stops the launch before train.
  train    every host gets a job script (experiments/tpu_host.py) started with setsid/nohup:
           it copies the prepared data to local disk and trains each run, logging to
           ~/xformer_logs and copying each log to `<workdir>/logs/`. Runs resume from their
           newest checkpoint in gs://, so a relaunch after a preemption continues them.
           On a VM that was READY, `launch` first asks every host whether its job still
           runs: if one does, it says so and starts nothing (the laptop lost its SSH session,
           the job did not); `--restart` stops that job (SIGTERM: it saves and exits) and
           starts again. Each run also holds its workdir's lease (xformer/workdir/lease.py).
`status` shows the VM state and each host's training process and last log lines, `logs` the
last `--lines` of worker 0's logs, `collect` copies every run directory (config, metrics,
tokenizer, checkpoints: what `pe_sweep --collect_only` and `xformer.load` read) to `--out`,
`delete` deletes the VM. `--dry_run` prints the commands instead of running them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pe_sweep  # noqa: E402
import tpu_host  # noqa: E402

VERBS = ("launch", "status", "logs", "collect", "delete")
STAGES = ("create", "setup", "prepare", "selfcheck", "train")
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
GONE = ("PREEMPTED", "TERMINATED", "SUSPENDED", "FAILED")  # Must be deleted to come back.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARBALL = "xformer_src.tar.gz"


def _where(args) -> list[str]:
  return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def _ssh(args, command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, *_where(args),
          f"--worker={worker}", f"--command={command}"]


def _vm(args, verb: str) -> list[str]:
  kind = ["queued-resources"] if args.queued else ["tpu-vm"]
  return ["gcloud", "compute", "tpus", *kind, verb, args.tpu, *_where(args)]


def _delete(args) -> list[str]:
  return _vm(args, "delete") + (["--force"] if args.queued else []) + ["--quiet"]


def describe(args) -> list[str]:
  field = "state.state" if args.queued else "state"
  return _vm(args, "describe") + [f"--format=value({field})"]


def create_commands(args, state: str | None) -> list[list[str]]:
  """What brings the VM to READY from `state` (None: absent; "?": unknown, the dry run)."""
  runtime = args.runtime or RUNTIMES.get(args.type.split("-")[0])
  if runtime is None:
    raise ValueError(f"No default runtime for TPU type {args.type!r}; pass --runtime "
                     f"(defaults known for {sorted(RUNTIMES)}).")
  if args.queued:
    create = _vm(args, "create") + [f"--node-id={args.tpu}", f"--accelerator-type={args.type}",
                                    f"--runtime-version={runtime}"]
  else:
    create = _vm(args, "create") + [f"--accelerator-type={args.type}", f"--version={runtime}"]
  create += ["--spot"] if args.spot else []
  if state in GONE or state == "?":
    return [_delete(args), create]
  return [create] if state is None else []


def setup_command(args) -> list[list[str]]:
  install = "python3 -m pip install --quiet -e '.[tpu]' -c constraints.txt"
  if args.ship_local:
    return [["gcloud", "compute", "tpus", "tpu-vm", "scp", os.path.join(tempfile.gettempdir(),
             TARBALL), f"{args.tpu}:{TARBALL}", *_where(args), "--worker=all"],
            _ssh(args, f"set -e; rm -rf xformer && mkdir xformer && tar xzf {TARBALL} -C "
                       f"xformer && cd xformer && {install}")]
  return [_ssh(args, f"set -e; test -d xformer || git clone {shlex.quote(args.repo)} xformer; "
                     f"cd xformer && git fetch --all --quiet && git checkout --quiet "
                     f"{shlex.quote(args.commit)} && {install}")]


def ship_local() -> str:
  """Tarball of the working tree (tracked and untracked, not ignored) for --ship_local."""
  files = subprocess.run(["git", "-C", REPO, "ls-files", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, text=True,
                         check=True).stdout.split()
  path = os.path.join(tempfile.gettempdir(), TARBALL)
  subprocess.run(["tar", "czf", path, "-C", REPO, *[f for f in files if os.path.exists(
      os.path.join(REPO, f))]], check=True)
  return path


def runs(args) -> list[tuple[str, str, list[str]]]:
  """(name, gs:// workdir, flags) of every run; data from the shared prepared copy."""
  root = args.workdir_root.rstrip("/")
  shared = [f"--config.data.data_dir={tpu_host.LOCAL_DATA}",
            f"--config.tokenizer.cache_dir={root}/tokenizers"]
  if not args.sweep:
    return [("run", f"{root}/run", [f"--config={args.config}", *shared] +
             [f"--config.{item}" for item in args.set])]
  out = []
  for run in pe_sweep.plan(args):
    name = f"{run.label}/seed{run.seed}"
    out.append((name, f"{root}/{name}",
                pe_sweep.run_flags(args, run.encoding, run.seed, run.overrides) + shared))
  return out


def prepare_command(args) -> list[str]:
  root, local = args.workdir_root.rstrip("/"), tpu_host.LOCAL_DATA
  flags = [f"--config={args.config}", f"--config.data.data_dir={local}",
           f"--config.tokenizer.cache_dir={root}/tokenizers",
           *[f"--config.{item}" for item in args.set]]
  return _ssh(args, "cd xformer && python3 -m xformer.data.prepare " + " ".join(
      shlex.quote(f) for f in flags) + f" && gcloud storage rsync -r {local} {root}/data",
      worker="0")


def build_commands(args, state: str | None = "?") -> list[tuple[str, list[str]]]:
  """(stage, argv) of every gcloud command of `args.verb`, in order."""
  if args.workdir_root and not args.workdir_root.startswith("gs://"):
    raise ValueError("--workdir_root must be a gs:// bucket: the VM's disk dies with the VM "
                     "(and with it every checkpoint a preempted run would resume from).")
  root = args.workdir_root.rstrip("/")
  if args.verb == "status":
    return [("status", describe(args)), ("status", _ssh(args, tpu_host.status_command()))]
  if args.verb == "logs":
    return [("logs", _ssh(args, tpu_host.logs_command(args.lines), worker="0"))]
  if args.verb == "delete":
    return [("delete", _delete(args))]
  if args.verb == "collect":
    return [("collect", ["gcloud", "storage", "cp", "-r", workdir,
                         os.path.dirname(os.path.join(args.out, name)) + "/"])
            for name, workdir, _ in runs(args)]
  cmds = [("create", argv) for argv in create_commands(args, state)]
  cmds += [("setup", argv) for argv in setup_command(args)]
  cmds.append(("prepare", prepare_command(args)))
  script = tpu_host.job_script(runs(args), shared_data=f"{root}/data",
                               local_data=tpu_host.LOCAL_DATA)
  if args.restart:  # Before the self-check too: the running job holds the chips.
    first = "selfcheck" if "selfcheck" in args.stages else "train"
    cmds.append((first, _ssh(args, tpu_host.stop_command())))
  check_flags = [f"--config={args.config}", *[f"--config.{item}" for item in args.set]]
  cmds.append(("selfcheck", _ssh(args, tpu_host.selfcheck_command(
      check_flags, f"{root}/selfcheck", steps=args.selfcheck_steps))))
  cmds.append(("train", _ssh(args, tpu_host.start_detached(script))))
  return [(stage, argv) for stage, argv in cmds if stage in args.stages]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("verb", nargs="?", default="launch", choices=VERBS)
  p.add_argument("--tpu", required=True, help="TPU VM (or queued resource) name.")
  p.add_argument("--zone", required=True)
  p.add_argument("--type", default="v4-8", help="Accelerator type, e.g. v4-8, v5litepod-16.")
  p.add_argument("--project", default="")
  p.add_argument("--runtime", default="", help="TPU software version (default per type).")
  p.add_argument("--spot", action="store_true", help="Preemptible (spot) capacity.")
  p.add_argument("--queued", action="store_true", help="Through a queued resource.")
  p.add_argument("--repo", default="https://github.com/xformer/xformer.git")
  p.add_argument("--commit", default="main")
  p.add_argument("--ship_local", action="store_true",
                 help="Install the local working tree (scp) instead of --repo at --commit.")
  p.add_argument("--config", default="configs/wmt_base.py")
  p.add_argument("--encodings", default="", help="Sweep these encodings (empty: one run).")
  p.add_argument("--variant", action="append", default=[], help="As pe_sweep's --variant.")
  p.add_argument("--steps", type=int, default=100_000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--seeds", type=int, default=1)
  p.add_argument("--set", action="append", default=[], help="Config override key=value.")
  p.add_argument("--workdir_root", required=True, help="gs://bucket/path for the run dirs.")
  p.add_argument("--out", default="sweeps/tpu", help="Local dir for collected runs.")
  p.add_argument("--lines", type=int, default=100, help="logs: lines per log.")
  p.add_argument("--stages", default=",".join(STAGES), help="launch: which stages.")
  p.add_argument("--selfcheck_steps", type=int, default=20, help="selfcheck: timed steps.")
  p.add_argument("--dry_run", action="store_true", help="Print the commands, run nothing.")
  p.add_argument("--restart", action="store_true",
                 help="launch: stop a job still running on the VM (it saves), then start.")
  args = p.parse_args(argv)
  args.stages = tuple(args.stages.split(","))
  bad = set(args.stages) - set(STAGES)
  if bad:
    p.error(f"unknown stages {sorted(bad)}; valid: {', '.join(STAGES)}")
  args.sweep = bool(args.encodings or args.variant)
  if not args.sweep:
    args.set = args.set + [f"num_train_steps={args.steps}", f"seed={args.seed}"]
  return args


def vm_state(args) -> str | None:
  """The VM's (or queued resource's) state, None when it does not exist."""
  out = subprocess.run(describe(args), capture_output=True, text=True, check=False)
  return out.stdout.strip() or "UNKNOWN" if out.returncode == 0 else None


def training_hosts(args) -> list[str]:
  """Lines `<host> xformer-job-running <pids>` of the hosts whose job script still runs."""
  out = subprocess.run(_ssh(args, tpu_host.running_command()), capture_output=True, text=True,
                       check=False)
  if out.returncode:
    print(f"[train] could not ask the hosts whether a job runs ({out.stderr.strip()[-300:]}); "
          "starting anyway.", flush=True)
  return [line for line in out.stdout.splitlines() if tpu_host.RUNNING_MARK in line]


def main(argv=None) -> list[str]:
  args = parse_args(argv)
  state = "?"
  if args.verb == "launch" and "create" in args.stages and not args.dry_run:
    state = vm_state(args)
    print(f"[create] {args.tpu} is {state or 'absent'}", flush=True)
  if (args.verb == "launch" and {"selfcheck", "train"} & set(args.stages)
      and state in ("READY", "?")
      and not args.dry_run and not args.restart):
    running = training_hosts(args)
    if running:
      print(f"[train] {args.tpu} is still training ({len(running)} host(s): "
            f"{'; '.join(running)}); not starting a second copy. Follow it with `status` or "
            "`logs`; `launch --restart` stops it (it saves) and starts again.", flush=True)
      return []
  if args.verb == "launch" and args.dry_run and "create" in args.stages:
    print("# create: `describe` first; a PREEMPTED/TERMINATED/SUSPENDED VM is deleted and "
          "recreated, an absent one created, a READY one kept:\n" + shlex.join(describe(args)))
  if args.ship_local and args.verb == "launch" and "setup" in args.stages and not args.dry_run:
    ship_local()
  lines = []
  for stage, cmd in build_commands(args, state):
    line = shlex.join(cmd)
    lines.append(line)
    print(f"# {stage}\n{line}" if args.dry_run else f"[{stage}] {line}", flush=True)
    if args.dry_run:
      continue
    if stage == "collect":
      os.makedirs(cmd[-1], exist_ok=True)
    if subprocess.run(cmd, check=False).returncode:
      sys.exit(f"[{stage}] failed; fix and rerun (runs resume from {args.workdir_root}).")
  if args.verb == "launch" and "train" in args.stages and not args.dry_run:
    print(f"Training detached on every host. Follow it with `{sys.argv[0]} status|logs ...`; "
          "after a preemption rerun this command.")
  return lines


if __name__ == "__main__":
  main()
