"""The pictures of a positional-encoding sweep (experiments/pe_sweep.py), from its aggregated
rows: a line is the mean over seeds, a band +- one standard deviation (when there are seeds)."""

from __future__ import annotations

import os

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _band(ax, x, curves, label, alpha=0.2, **line_kw):
  """Mean line and a +- std band of equally long curves [seeds, len(x)]."""
  curves = np.asarray(curves, np.float64)
  mean = curves.mean(0)
  (line,) = ax.plot(x, mean, label=label, **line_kw)
  if len(curves) > 1:
    std = curves.std(0, ddof=1)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=alpha, linewidth=0)


def _save(fig, out: str, name: str) -> None:
  fig.savefig(os.path.join(out, name), dpi=110, bbox_inches="tight")
  plt.close(fig)


def training_curves(out: str, table: list[dict]) -> None:
  fig, ax = plt.subplots(figsize=(7, 4))
  for r in table:
    curves = r["curve"]
    if not curves or "+" in r["label"]:  # Evaluation-time variants share their run's curve.
      continue
    n = min(len(c) for c in curves)
    _band(ax, [s for s, _ in curves[0][:n]], [[v for _, v in c[:n]] for c in curves], r["label"])
  ax.set(xlabel="step", ylabel="train loss (label-smoothed)", title="Training curves")
  ax.legend(fontsize=8)
  _save(fig, out, "training_curves.png")


def final_metric(out: str, table: list[dict]) -> None:
  metric = [(r["label"], r["final"]) for r in table if r.get("final") and "+" not in r["label"]]
  fig, ax = plt.subplots(figsize=(8, 3.5))
  ax.bar([m[0] for m in metric], [m[1][0] for m in metric],
         yerr=[m[1][1] or 0 for m in metric], capsize=3)
  ax.set(ylabel="final metric (LM: validation perplexity; translation: test BLEU)",
         title="Final metric per label (error bar: std over seeds)")
  ax.tick_params(axis="x", rotation=30)
  _save(fig, out, "final_metric.png")


def length_generalization(out: str, table: list[dict]) -> None:
  fig, ax = plt.subplots(figsize=(8.5, 4.5))
  factors = sorted(int(k.split("@")[1][:-1]) for k in table[0] if k.startswith("ppl@"))
  colors = plt.get_cmap("tab20").colors
  if factors:
    for i, r in enumerate(table):
      pts = [(k, r[f"ppl@{k}x"]) for k in factors if r.get(f"ppl@{k}x")]
      if not pts:
        continue
      x, cells = zip(*pts)
      mean, std = np.array([c[0] for c in cells]), np.array([c[1] or 0 for c in cells])
      color = colors[i % len(colors)]
      ax.plot(x, mean, "--" if "+" in r["label"] else "-", marker="o", ms=4, color=color,
              label=r["label"])
      ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.08, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="evaluation length / training length",
           ylabel="perplexity", title="Length generalisation (mean ± std over seeds)")
    ax.set_xticks(factors, [f"{k}x" for k in factors])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  else:  # Translation: greedy BLEU on test vs test_long.
    names = [r["label"] for r in table]
    for i, split in enumerate(("test", "test_long")):
      cells = [r.get(f"{split}_bleu_greedy") or (0.0, 0.0) for r in table]
      ax.bar([j + 0.4 * i for j in range(len(table))], [c[0] for c in cells], width=0.4,
             yerr=[c[1] or 0 for c in cells], capsize=2, label=split)
    ax.set_xticks([j + 0.2 for j in range(len(table))], names, rotation=30)
    ax.set(ylabel="greedy BLEU", title="Length generalisation: test vs test_long")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  _save(fig, out, "length_generalization.png")


def position_loss(out: str, table: list[dict], train_len: int | None = None) -> None:
  """Next-token NLL by position in the longest windows (up to 8x the training length), in
  buckets of half the training length: the text's own difficulty varies a lot from position to
  position (the same windows for every label), so single positions hide the trend."""
  rows = [r for r in table if r.get("position_nll")]
  if not rows:
    return
  width = max((train_len or 16) // 2, 1)
  colors = plt.get_cmap("tab20").colors
  fig, ax = plt.subplots(figsize=(9, 5))
  for i, r in enumerate(rows):
    n = min(len(c) for c in r["position_nll"]) // width * width
    curves = [np.asarray(c[:n]).reshape(-1, width).mean(1) for c in r["position_nll"]]
    x = np.arange(len(curves[0])) * width + width / 2
    _band(ax, x, curves, r["label"], alpha=0.12, ls="--" if "+" in r["label"] else "-",
          marker="o", ms=3, color=colors[i % len(colors)])
  if train_len:
    ax.axvline(train_len, color="gray", ls=":", lw=1)
  ax.set(xlabel="position in the window", ylabel=f"next-token NLL (mean of {width} positions)",
         title="Loss by position, mean ± std over seeds (dotted: training length)")
  ax.legend(fontsize=7, ncol=3)
  _save(fig, out, "position_loss.png")


def plot_all(out: str, table: list[dict], train_len: int | None = None) -> None:
  training_curves(out, table)
  final_metric(out, table)
  length_generalization(out, table)
  position_loss(out, table, train_len)
