"""Launch a config or a positional-encoding sweep on a Cloud TPU VM with `gcloud`.

  python experiments/launch_tpu.py --tpu=xformer-v4 --zone=us-central2-b --type=v4-8 \
      --config=configs/wmt_base.py --encodings=sinusoidal,rope,alibi --steps=100000 \
      --workdir_root=gs://my-bucket/xformer/wmt_sweep --repo=https://github.com/me/xformer \
      --commit=main --spot --dry_run

Stages (all by default, in order): create the TPU VM; install xformer on every host
(`--worker=all`); train each encoding on every host (one process per host, jax.distributed
initialises itself on TPU pods); copy each run's metrics and tokenizer back to `--out` (for
experiments/pe_sweep.py --collect_only); delete the VM. `--dry_run` prints the commands.

Runs are resumable: each encoding trains in `<workdir_root>/<encoding>/seed<seed>` (pe_sweep's
layout; a gs:// bucket, so it
outlives the VM), and `xformer.main` resumes from the newest checkpoint there. After a
preemption, rerun the same command (or `--stages=create,setup,train,collect,delete`): finished
encodings return at once, the interrupted one continues.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pe_sweep  # noqa: E402

STAGES = ("create", "setup", "train", "collect", "delete")
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}


def _ssh(args, command: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}",
          f"--project={args.project}" if args.project else None, "--worker=all",
          f"--command={command}"]


def build_commands(args) -> list[tuple[str, list[str]]]:
  """(stage, argv) of every gcloud command, in order."""
  generation = args.type.split("-")[0]
  runtime = args.runtime or RUNTIMES.get(generation)
  if runtime is None:
    raise ValueError(f"No default runtime for TPU type {args.type!r}; pass --runtime "
                     f"(defaults known for {sorted(RUNTIMES)}).")
  if args.workdir_root and not args.workdir_root.startswith("gs://") and "train" in args.stages:
    raise ValueError("--workdir_root must be a gs:// bucket: the VM's disk dies with the VM "
                     "(and with it every checkpoint a preempted run would resume from).")
  project = [f"--project={args.project}"] if args.project else []
  cmds: list[tuple[str, list[str]]] = []
  cmds.append(("create", ["gcloud", "compute", "tpus", "tpu-vm", "create", args.tpu,
                          f"--zone={args.zone}", *project, f"--accelerator-type={args.type}",
                          f"--version={runtime}"] + (["--spot"] if args.spot else [])))
  setup = (f"set -e; test -d xformer || git clone {shlex.quote(args.repo)} xformer; "
           f"cd xformer && git fetch --all --quiet && git checkout --quiet "
           f"{shlex.quote(args.commit)} && python3 -m pip install --quiet -e '.[tpu]'")
  cmds.append(("setup", _ssh(args, setup)))
  for enc in args.encodings.split(","):
    flags = pe_sweep.run_flags(args, enc) if args.sweep else [f"--config={args.config}"] + [
        f"--config.{item}" for item in args.set]
    rel = f"{enc}/seed{args.seed}" if args.sweep else "run"  # pe_sweep's layout
    workdir = f"{args.workdir_root.rstrip('/')}/{rel}"
    run = "cd xformer && python3 -m xformer.main " + " ".join(
        shlex.quote(f) for f in [*flags, f"--workdir={workdir}"])
    cmds.append(("train", _ssh(args, run)))
    # The whole run directory (config, metrics, tokenizer, checkpoints): what
    # `pe_sweep --collect_only` and `xformer.load` read.
    local = os.path.dirname(os.path.join(args.out, rel))
    cmds.append(("collect", ["gcloud", "storage", "cp", "-r", workdir, local + "/"]))
  cmds.append(("delete", ["gcloud", "compute", "tpus", "tpu-vm", "delete", args.tpu,
                          f"--zone={args.zone}", *project, "--quiet"]))
  return [(stage, [a for a in argv if a is not None]) for stage, argv in cmds
          if stage in args.stages]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tpu", required=True, help="TPU VM name.")
  p.add_argument("--zone", required=True)
  p.add_argument("--type", required=True, help="Accelerator type, e.g. v4-8, v5litepod-16.")
  p.add_argument("--project", default="")
  p.add_argument("--runtime", default="", help="TPU software version (default per type).")
  p.add_argument("--spot", action="store_true", help="Preemptible (spot) capacity.")
  p.add_argument("--repo", default="https://github.com/xformer/xformer.git")
  p.add_argument("--commit", default="main")
  p.add_argument("--config", default="configs/wmt_base.py")
  p.add_argument("--encodings", default="", help="Sweep these encodings (empty: one run).")
  p.add_argument("--steps", type=int, default=100_000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--set", action="append", default=[], help="Config override key=value.")
  p.add_argument("--workdir_root", required=True, help="gs://bucket/path for the run dirs.")
  p.add_argument("--out", default="sweeps/tpu", help="Local dir for collected results.")
  p.add_argument("--stages", default=",".join(STAGES))
  p.add_argument("--dry_run", action="store_true", help="Print the commands, run nothing.")
  args = p.parse_args(argv)
  args.stages = tuple(args.stages.split(","))
  bad = set(args.stages) - set(STAGES)
  if bad:
    p.error(f"unknown stages {sorted(bad)}; valid: {', '.join(STAGES)}")
  args.sweep = bool(args.encodings)
  if not args.sweep:
    args.encodings = "run"
    args.set = args.set + [f"num_train_steps={args.steps}", f"seed={args.seed}"]
  return args


def main(argv=None) -> list[str]:
  args = parse_args(argv)
  lines = []
  for stage, cmd in build_commands(args):
    line = shlex.join(cmd)
    lines.append(line)
    print(f"# {stage}\n{line}" if args.dry_run else f"[{stage}] {line}", flush=True)
    if args.dry_run:
      continue
    if stage == "collect":
      os.makedirs(cmd[-1], exist_ok=True)
    if subprocess.run(cmd, check=False).returncode:
      sys.exit(f"[{stage}] failed; fix and rerun (runs resume from {args.workdir_root}).")
  return lines


if __name__ == "__main__":
  main()
