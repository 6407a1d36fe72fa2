"""Sweep positional encodings: train one run per encoding and seed, then tabulate and plot.

  python experiments/pe_sweep.py --config=configs/lm_default.py --steps=400 --seeds=3 \
      --out=sweeps/lm --set=data.max_target_len=64 --extend=linear,ntk,yarn \
      --variant=rope_rand=rope,model.random_positions=512

Every run trains with the same config and steps in `<out>/<label>/seed<k>` (a normal run
directory: rerunning resumes or skips finished runs). A label is an encoding name, or a
`--variant=LABEL=ENCODING[,key=value...]` (an encoding with config overrides of its own).
`--extend` adds, for every RoPE label of an LM sweep, rows that read the same runs with a RoPE
scaling applied at evaluation (factor k for the k x L windows). Then: `results.csv` (every run),
`results.md` (mean +- std over seeds per label), `results.json` and the pictures of
experiments/sweep_plots.py.

The learned table gets exactly the longest length the run reads, so that positions past it are
reported as impossible, not read from untrained rows. `--parallel=N` trains N runs at a time,
each on its own devices (default: as many as the local accelerators allow; 1 on a CPU host).
`--collect_only` builds the results from run directories made elsewhere (e.g. on a Cloud TPU
through experiments/launch_tpu.py, copied back): each holds its config, checkpoint and tokenizer.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import length_generalization as lengths  # noqa: E402
import sweep_plots  # noqa: E402

from xformer import config_lib, positional, tasks  # noqa: E402
from xformer.model import decode  # noqa: E402
from xformer.runtime import metric_writer  # noqa: E402
from xformer.workdir import bundle as bundle_lib  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Run:
  label: str
  encoding: str
  overrides: tuple[str, ...]
  seed: int
  workdir: str


def run_flags(args, encoding: str, seed: int | None = None,
              overrides: tuple[str, ...] = ()) -> list[str]:
  """`python -m xformer.main` flags of one run (also used by launch_tpu.py)."""
  items = [*args.set, *overrides]
  config = config_lib.load_file(args.config, None, [f"model.posemb={encoding}", *items])
  flags = [f"--config={args.config}", f"--config.model.posemb={encoding}",
           f"--config.num_train_steps={args.steps}",
           f"--config.seed={args.seed if seed is None else seed}"]
  flags += [f"--config.{item}" for item in items]
  if positional.get(encoding).LIMITED_TO_MAX_LEN:  # The table ends where reading ends.
    longest = tasks.get(config.task).longest_position(config.data,
                                                      decode.Settings(**config.decode))
    flags.append(f"--config.model.max_len={max(longest, config.model.random_positions)}")
  return flags


def plan(args) -> list[Run]:
  """Every (label, seed) run of the sweep, in training order (seeds outermost: a partial sweep
  already has one seed of everything)."""
  labels = [(enc, enc, ()) for enc in args.encodings.split(",") if enc]
  for spec in args.variant:
    label, _, rest = spec.partition("=")
    encoding, *overrides = rest.split(",")
    labels.append((label, encoding, tuple(overrides)))
  for _, encoding, _ in labels:
    positional.get(encoding)  # Unknown names fail now, listing the valid ones.
  return [Run(label, enc, over, seed, os.path.join(args.out, label, f"seed{seed}"))
          for seed in range(args.seed, args.seed + args.seeds) for label, enc, over in labels]


def _device_env(platform: str, slot: int, parallel: int) -> dict[str, str]:
  """Environment giving run slot `slot` of `parallel` its own accelerator."""
  if parallel <= 1:
    return {}
  if platform == "gpu":
    return {"CUDA_VISIBLE_DEVICES": str(slot)}
  if platform == "tpu":  # One chip per process (jax's documented multi-process-per-VM setting).
    return {"TPU_VISIBLE_CHIPS": str(slot), "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
            "TPU_PROCESS_BOUNDS": "1,1,1", "TPU_PROCESS_PORT": str(8476 + slot),
            "TPU_PROCESS_ADDRESSES": f"localhost:{8476 + slot}"}
  return {}


def _default_parallel() -> tuple[int, str]:
  from xformer.runtime import platforms  # noqa: PLC0415  (starts no backend on a CPU host)
  if platforms.cpu_only():
    return 1, "cpu"
  import jax  # noqa: PLC0415
  return jax.local_device_count(), jax.default_backend()


def train_all(args, runs: list[Run]) -> dict[str, float]:
  """Trains every run (`args.parallel` at a time); wall seconds per `_key`."""
  parallel, platform = _default_parallel()
  parallel = min(args.parallel or parallel, len(runs)) or 1
  free, active, times = list(range(parallel)), {}, {}
  pending = list(runs)
  while pending or active:
    while pending and free:
      run, slot = pending.pop(0), free.pop(0)
      os.makedirs(run.workdir, exist_ok=True)
      cmd = [sys.executable, "-m", "xformer.main",
             *run_flags(args, run.encoding, run.seed, run.overrides), f"--workdir={run.workdir}"]
      print(f"[{run.label} seed {run.seed}] {' '.join(cmd[1:])}", flush=True)
      log = open(os.path.join(run.workdir, "log.txt"), "a")  # noqa: SIM115
      log.write(f"$ {' '.join(cmd)}\n")
      log.flush()
      env = {**os.environ, **_device_env(platform, slot, parallel),
             # Seeds and encodings of one shape compile once: a cache shared by the sweep.
             "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.abspath(args.out), ".jax_cache"),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
      proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
      active[proc] = (run, slot, log, time.time())
    finished = [p for p in active if p.poll() is not None] or [_wait_any(active)]
    for proc in finished:
      run, slot, log, start = active.pop(proc)
      log.close()
      free.append(slot)
      times[_key(run)] = time.time() - start
      if proc.returncode:
        raise RuntimeError(f"[{run.label} seed {run.seed}] failed (exit {proc.returncode}); "
                           f"see {run.workdir}/log.txt")
      print(f"[{run.label} seed {run.seed}] done in {times[_key(run)]:.0f}s", flush=True)
  return times


def _key(run: Run) -> str:
  """A run's name in results.json's training times: its directory relative to --out."""
  return f"{run.label}/seed{run.seed}"


def _wait_any(active) -> subprocess.Popen:
  while True:
    for proc in active:
      if proc.poll() is not None:
        return proc
    time.sleep(0.2)


def _lm_row(b, args, scaling=None) -> dict:
  report = lengths.lm_report(b, args.eval_split, rope_scaling=scaling)
  row = {f"ppl@{k}x": v for k, v in report["ppl"].items()}
  row.update(position_nll=report.get("position_nll_curve"), limit=report["limit"],
             train_len=report["train_len"])
  return row


def _translation_row(b, args, scaling=None) -> dict:
  del scaling
  report = lengths.translation_report(b, limit=args.translation_limit)
  row = {}
  for split in ("test", "test_long"):
    part = report.get(split)
    row[f"{split}_bleu_greedy"] = None if part is None else part["bleu"]
    row[f"{split}_exact"] = None if part is None else part["exact"]
  return row


# What each task reports in a sweep: (bundle, args, rope scaling or None) -> row cells.
ROWS = {"lm": _lm_row, "translation": _translation_row}
FINAL_METRIC = {"lm": "validation/perplexity", "translation": "test/bleu"}


def collect(args, runs: list[Run], times: dict[str, float]) -> list[dict]:
  """One row per run (and per --extend scaling of each RoPE LM run)."""
  rows = []
  for run in runs:
    metrics = metric_writer.read_metrics(run.workdir)
    final = {k: v for m in metrics for k, v in m.items()}  # Last value of every key.
    b = bundle_lib.load(run.workdir)
    task = b.run.task.name
    if task not in ROWS:
      raise ValueError(f"pe_sweep has no report for task {task!r}; it knows {sorted(ROWS)}.")
    base = {"label": run.label, "seed": run.seed, "steps": final.get("step"),
            "train_loss": final.get("train/loss"), "final": final.get(FINAL_METRIC[task]),
            "wall_s": times.get(_key(run)),
            "curve": [(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m]}
    scalings = [None] + (args.extend.split(",") if args.extend and task == "lm"
                         and run.encoding == "rope" else [])
    for scaling in scalings:
      label = run.label + (f"+{scaling}" if scaling else "")
      rows.append({**base, "label": label, **ROWS[task](b, args, scaling)})
      print(f"[{label} seed {run.seed}] " + json.dumps(
          {k: v for k, v in rows[-1].items() if k not in ("curve", "position_nll")}), flush=True)
  return rows


HIDDEN = ("curve", "position_nll", "limit", "seed", "label", "train_len")


def aggregate(rows: list[dict]) -> list[dict]:
  """Per label: mean and std (over seeds, ddof=1) of every numeric cell; None if any is None."""
  out = []
  for label in dict.fromkeys(r["label"] for r in rows):
    group = [r for r in rows if r["label"] == label]
    agg = {"label": label, "seeds": len(group), "limit": group[0].get("limit"),
           "train_len": group[0].get("train_len")}
    for key in (k for k in group[0] if k not in HIDDEN):
      values = [r.get(key) for r in group]
      if all(isinstance(v, (int, float)) for v in values):
        agg[key] = (float(np.mean(values)),
                    float(np.std(values, ddof=1)) if len(values) > 1 else None)
      else:
        agg[key] = None
    for key in ("curve", "position_nll"):
      agg[key] = [r[key] for r in group if r.get(key)]
    out.append(agg)
  return out


def _fmt(cell, limit=None) -> str:
  if cell is None:
    return f"n/a (table {limit})" if limit else "n/a"
  mean, std = cell
  return f"{mean:.3g}" if std is None else f"{mean:.3g} ± {std:.2g}"


def write_results(args, rows: list[dict]) -> list[dict]:
  columns = [c for c in rows[0] if c not in ("curve", "position_nll", "limit", "train_len")]
  with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for r in rows:
      writer.writerow([r.get(c) for c in columns])
  table = aggregate(rows)
  cols = [c for c in table[0] if c not in ("label", "seeds", "curve", *HIDDEN)]
  lines = ["| label | seeds | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
  for r in table:
    lines.append(f"| {r['label']} | {r['seeds']} | "
                 + " | ".join(_fmt(r[c], r["limit"]) for c in cols) + " |")
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  sweep_plots.plot_all(args.out, table, table[0].get("train_len"))
  return table


def _previous_times(out: str) -> dict[str, float]:
  """Training wall times recorded by an earlier sweep into the same directory, if any."""
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f).get("times", {})


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/lm_default.py")
  p.add_argument("--encodings", default=",".join(positional.names()))
  p.add_argument("--variant", action="append", default=[],
                 help="LABEL=ENCODING[,key=value...]: one more row (repeatable).")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--seed", type=int, default=0, help="First seed.")
  p.add_argument("--seeds", type=int, default=1, help="Seeds per label: seed, seed + 1, ...")
  p.add_argument("--out", default="sweeps/pe")
  p.add_argument("--set", action="append", default=[],
                 help="Config override key=value (repeatable), e.g. data.max_target_len=64.")
  p.add_argument("--extend", default="", help="LM: RoPE scalings read at evaluation, e.g. yarn.")
  p.add_argument("--parallel", type=int, default=0, help="Runs at a time (0: one per device).")
  p.add_argument("--eval_split", default="validation")
  p.add_argument("--translation_limit", type=int, default=500)
  p.add_argument("--collect_only", action="store_true", help="Only tabulate existing runs.")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  runs = plan(args)
  start = time.time()
  times = _previous_times(args.out) if args.collect_only else train_all(args, runs)
  train_s = time.time() - start
  rows = collect(args, runs, times)
  write_results(args, rows)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"args": vars(args), "rows": rows, "times": times}, f, indent=1)
  print(f"Sweep of {len(runs)} runs done in {time.time() - start:.0f}s (training "
        f"{train_s:.0f}s); results in {args.out}/results.md", flush=True)


if __name__ == "__main__":
  main()
