"""Sweep positional encodings: train one run per encoding, then tabulate and plot.

  python experiments/pe_sweep.py --config=configs/lm_default.py --steps=300 --out=sweeps/lm \
      --set=data.max_target_len=64

Every encoding (default: all registered) trains with the same config, steps and seed in
`<out>/<encoding>` (a normal run directory: rerunning resumes or skips finished runs). Then:
`results.csv` and `results.md` (final metrics, length generalisation, wall time) and pictures:
`training_curves.png`, `final_metric.png`, `length_generalization.png`.

The learned table gets exactly the training length (model.max_len = data.max_target_len for an
LM) so that positions past it are reported as impossible, not read from untrained rows.
`--collect_only` builds the results from run directories made elsewhere (e.g. on a Cloud TPU
through experiments/launch_tpu.py, copied back).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import matplotlib  # noqa: E402
import matplotlib.ticker  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import length_generalization as lengths  # noqa: E402
from xformer import bundle as bundle_lib  # noqa: E402
from xformer import config_lib, decode, metric_writer, positional, tasks  # noqa: E402


def run_flags(args, encoding: str) -> list[str]:
  """`python -m xformer.main` flags of one run (also used by launch_tpu.py)."""
  config = config_lib.load_file(args.config, None, [f"model.posemb={encoding}", *args.set])
  flags = [f"--config={args.config}", f"--config.model.posemb={encoding}",
           f"--config.num_train_steps={args.steps}", f"--config.seed={args.seed}"]
  flags += [f"--config.{item}" for item in args.set]
  if positional.get(encoding).LIMITED_TO_MAX_LEN:  # The table ends where reading ends.
    longest = tasks.get(config.task).longest_position(config.data,
                                                      decode.Settings(**config.decode))
    flags.append(f"--config.model.max_len={longest}")
  return flags


def train_all(args, encodings: list[str]) -> dict[str, float]:
  times = {}
  for enc in encodings:
    workdir = os.path.join(args.out, enc)
    os.makedirs(workdir, exist_ok=True)
    cmd = [sys.executable, "-m", "xformer.main", *run_flags(args, enc), f"--workdir={workdir}"]
    print(f"[{enc}] {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    with open(os.path.join(workdir, "log.txt"), "a") as log:
      proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    times[enc] = time.time() - start
    if proc.returncode:
      raise RuntimeError(f"[{enc}] failed (exit {proc.returncode}); see {workdir}/log.txt")
    print(f"[{enc}] done in {times[enc]:.0f}s", flush=True)
  return times


def collect(args, encodings: list[str], times: dict[str, float]) -> list[dict]:
  rows = []
  for enc in encodings:
    workdir = os.path.join(args.out, enc)
    metrics = metric_writer.read_metrics(workdir)
    final = {k: v for m in metrics for k, v in m.items()}  # Last value of every key.
    curve = [(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m]
    b = bundle_lib.load(workdir)
    row = {"encoding": enc, "steps": final.get("step"), "train_loss": curve[-1][1],
           "wall_s": times.get(enc), "curve": curve}
    if b.run.task.name == "lm":
      report = lengths.lm_report(b, args.eval_split)
      row["val_ppl"] = final.get("validation/perplexity")
      row.update({f"ppl@{k}x": v for k, v in report["ppl"].items()})
      row["position_ppl"] = report.get("position_ppl", {})
      row["limit"] = report["limit"]
    else:
      report = lengths.translation_report(b, limit=args.translation_limit)
      row["test_bleu"] = final.get("test/bleu")
      for split in ("test", "test_long"):
        part = report.get(split)
        row[f"{split}_bleu_greedy"] = None if part is None else part["bleu"]
        row[f"{split}_exact"] = None if part is None else part["exact"]
    rows.append(row)
    print(f"[{enc}] " + json.dumps({k: v for k, v in row.items()
                                    if k not in ("curve", "position_ppl")}), flush=True)
  return rows


def _fmt(v) -> str:
  if v is None:
    return "n/a"
  return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_results(args, rows: list[dict]) -> None:
  columns = [c for c in rows[0] if c not in ("curve", "position_ppl", "limit")]
  with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for r in rows:
      writer.writerow([r.get(c) for c in columns])
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    cells = [_fmt(r.get(c)) for c in columns]
    if r.get("limit"):
      cells = [c if c != "n/a" else f"n/a (table {r['limit']})" for c in cells]
    lines.append("| " + " | ".join(cells) + " |")
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  _plots(args, rows)


def _plots(args, rows: list[dict]) -> None:
  fig, ax = plt.subplots(figsize=(7, 4))
  for r in rows:
    ax.plot(*zip(*r["curve"]), label=r["encoding"])
  ax.set(xlabel="step", ylabel="train loss (label-smoothed)", title="Training curves")
  ax.legend()
  fig.savefig(os.path.join(args.out, "training_curves.png"), dpi=110, bbox_inches="tight")
  metric = "val_ppl" if "val_ppl" in rows[0] else "test_bleu"
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.bar([r["encoding"] for r in rows], [r.get(metric) or 0 for r in rows])
  ax.set(ylabel=metric, title=f"{metric} per encoding")
  fig.savefig(os.path.join(args.out, "final_metric.png"), dpi=110, bbox_inches="tight")
  fig, ax = plt.subplots(figsize=(7, 4))
  if metric == "val_ppl":
    factors = [1, 2, 4, 8]
    for r in rows:
      pts = [(k, r.get(f"ppl@{k}x")) for k in factors if r.get(f"ppl@{k}x") is not None]
      ax.plot(*zip(*pts), marker="o", label=r["encoding"])
    ax.set(xscale="log", yscale="log", xlabel="evaluation length / training length",
           ylabel="perplexity", title="Length generalisation (learned: table ends at 1x)")
    ax.set_xticks(factors, [f"{k}x" for k in factors])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  else:
    names = [r["encoding"] for r in rows]
    for i, split in enumerate(("test", "test_long")):
      ax.bar([j + 0.4 * i for j in range(len(rows))],
             [r.get(f"{split}_bleu_greedy") or 0 for r in rows], width=0.4, label=split)
    ax.set_xticks([j + 0.2 for j in range(len(rows))], names)
    ax.set(ylabel="greedy BLEU", title="Length generalisation: test vs test_long")
  ax.legend()
  fig.savefig(os.path.join(args.out, "length_generalization.png"), dpi=110, bbox_inches="tight")


def _previous_times(out: str) -> dict[str, float]:
  """Training wall times recorded by an earlier sweep into the same directory, if any."""
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {r["encoding"]: r["wall_s"] for r in json.load(f)["rows"] if r.get("wall_s")}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/lm_default.py")
  p.add_argument("--encodings", default=",".join(positional.names()))
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="sweeps/pe")
  p.add_argument("--set", action="append", default=[],
                 help="Config override key=value (repeatable), e.g. data.max_target_len=64.")
  p.add_argument("--eval_split", default="validation")
  p.add_argument("--translation_limit", type=int, default=500)
  p.add_argument("--collect_only", action="store_true", help="Only tabulate existing runs.")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  encodings = args.encodings.split(",")
  for enc in encodings:
    positional.get(enc)  # Unknown names fail now, listing the valid ones.
  start = time.time()
  times = _previous_times(args.out) if args.collect_only else train_all(args, encodings)
  rows = collect(args, encodings, times)
  write_results(args, rows)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"args": vars(args), "rows": rows}, f, indent=1)
  print(f"Sweep of {len(encodings)} encodings done in {time.time() - start:.0f}s; results in "
        f"{args.out}/results.md", flush=True)


if __name__ == "__main__":
  main()
