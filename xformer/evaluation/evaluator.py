"""Evaluation of a run: one module for training's periodic evaluation, the evaluate command
(`python -m xformer.evaluate`) and notebooks: loss and perplexity
over a split, plus the task's own metrics (translation: sacreBLEU with its signature and the
tokenized BLEU papers report; LM with --thorough: perplexity past the trained length). The
command prints them and writes them as JSON into the workdir.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Iterable

import jax
import numpy as np

from xformer.evaluation import bleu
from xformer.model import decode


@dataclasses.dataclass
class Context:
  """What evaluating a split needs: the run (model, mesh, jitted steps), its inputs (dataset,
  tokenizer), how to decode, and the rows per batch (a multiple of the batch devices)."""

  run: Any
  inputs: Any
  decode: decode.Settings
  batch_size: int


def summarize(sums: dict[str, float], prefix: str) -> dict[str, float]:
  """Token sums -> per-token loss, perplexity and accuracy."""
  weight = max(float(sums["weight"]), 1.0)
  nll = float(sums["nll"]) / weight
  return {f"{prefix}/loss": float(sums["loss"]) / weight, f"{prefix}/nll": nll,
          f"{prefix}/perplexity": math.exp(min(nll, 50.0)),
          f"{prefix}/accuracy": float(sums["correct"]) / weight,
          f"{prefix}/tokens": float(sums["weight"])}


def accumulate(batches: Iterable[dict[str, np.ndarray]],
               eval_fn: Callable[[dict[str, np.ndarray]], dict[str, Any]]) -> dict[str, float]:
  """Sums eval_fn's token sums over batches."""
  total: dict[str, float] = {}
  for batch in batches:
    for k, v in jax.device_get(eval_fn(batch)).items():
      total[k] = total.get(k, 0.0) + float(v)
  return total


def evaluate(ctx: Context, params: Any, split: str, *, loss_limit: int | None,
             metric_limit: int | None, num_samples: int = 0,
             thorough: bool = False) -> dict[str, float]:
  """Loss and perplexity over `split` (its first loss_limit examples; 0/None: all), and the
  task's metrics over its first metric_limit (-1: none) examples."""
  batches = ctx.inputs.eval_batches(split, loss_limit)
  sums = accumulate((ctx.run.put_batch(b) for b in batches),
                    lambda b: ctx.run.p_eval_step(params, b))
  metrics = summarize(sums, split)
  if metric_limit != -1:
    metrics.update(ctx.run.task.eval_metrics(ctx, params, split, metric_limit or None,
                                             num_samples=num_samples, thorough=thorough))
  return metrics


def write_json(path: str, payload: dict[str, Any]) -> None:
  from etils import epath  # pylint: disable=import-outside-toplevel
  epath.Path(path).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")


def evaluate_workdir(workdir: str, *, step: int | None = None, average_last: int = 1,
                     split: str | None = None, limit: int = 0, data_dir: str = "",
                     beam: int | None = None, alpha: float | None = None,
                     max_extra: int | None = None) -> dict[str, Any]:
  """Evaluates a finished (or running) run's checkpoint, averaged over its `average_last`
  newest, on `split` (default: the config's test split); writes and returns the report.

  `beam`, `alpha` and `max_extra` override the run's config.decode (None: keep it).
  """
  from xformer.data.inputs import Inputs  # pylint: disable=import-outside-toplevel
  from xformer.workdir import bundle  # pylint: disable=import-outside-toplevel
  run, _, ckpt, step, workdir = bundle.load_run(workdir, step, devices=jax.local_devices())
  params, used = bundle.restore_params(run, ckpt, step, average_last)
  ckpt.close()
  config = run.config
  if data_dir:
    config.data.data_dir = data_dir
  split = split or config.data.test_split
  overrides = {"beam_size": beam, "alpha": alpha, "max_extra": max_extra}
  settings = dataclasses.replace(decode.Settings(**config.decode), **{
      k: v for k, v in overrides.items() if v is not None})
  ctx = Context(run, Inputs.of_config(config, run.task, workdir), settings, config.eval_batch_size)
  metrics = evaluate(ctx, params, split, loss_limit=limit, metric_limit=limit, thorough=True)
  report = {"workdir": workdir, "step": step, "averaged_steps": used, "split": split,
            "limit": limit or None, "decode": dataclasses.asdict(settings), "metrics": metrics}
  if f"{split}/bleu" in metrics:
    report["sacrebleu_signature"] = bleu.sacrebleu_signature()
  name = f"eval_{split}_step{step}" + (f"_avg{len(used)}" if used else "") + (
      f"_beam{settings.beam_size}_limit{limit}" if limit else f"_beam{settings.beam_size}")
  write_json(f"{workdir}/{name}.json", report)
  report["path"] = f"{workdir}/{name}.json"
  return report


def format_report(report: dict[str, Any]) -> str:
  lines = [f"{report['workdir']} step {report['step']}"
           + (f" (average of {report['averaged_steps']})" if report["averaged_steps"] else "")
           + f", split {report['split']}" + (f", first {report['limit']}" if report["limit"]
                                            else "") + f", decode {report['decode']}"]
  for key, value in report["metrics"].items():
    lines.append(f"  {key:28s} {'n/a' if math.isnan(value) else f'{value:.4f}'}")
  if "sacrebleu_signature" in report:
    lines.append(f"  sacreBLEU signature: {report['sacrebleu_signature']}")
  lines.append(f"written to {report['path']}")
  return "\n".join(lines)
