"""The training loop, top to bottom: build, restore or initialise, train, save, evaluate.

`train_and_evaluate(config, workdir)` resumes from the newest checkpoint in `workdir` when there
is one, so re-running the same command continues an interrupted run (or reports it is done).
"""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from typing import Any

import jax
import ml_collections
from etils import epath
import numpy as np

from xformer import config_lib, evaluate, metric_writer, preemption, sharding
from xformer import run as run_lib
from xformer.checkpoint import Checkpointer, CorruptCheckpointError
from xformer.data import pipeline
from xformer.steps import TrainState


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite (nan_policy='fail')."""


def log_line(text: str) -> None:
  """Progress for people: process 0 prints it; every process logs it."""
  if jax.process_index() == 0:
    print(text, flush=True)
  logging.info(text)


def _restore_latest_good(run: run_lib.Run, ckpt: Checkpointer, train_iter) -> tuple[int, Any]:
  """Restores the newest readable step, warning about every damaged newer one. An explicit
  config.restore_step must be readable; a directory whose every step is damaged is an error
  (never a silent fresh start)."""
  config = run.config
  if config.restore_step >= 0:
    if config.restore_step not in ckpt.steps():
      raise FileNotFoundError(f"restore_step={config.restore_step} is not a checkpoint of "
                              f"{ckpt.directory}; available steps: {ckpt.steps()}.")
    candidates = [config.restore_step]
  else:
    candidates = sorted(ckpt.steps(), reverse=True)
  bad = []
  for step in candidates:
    try:
      return step, ckpt.restore(step, run.abstract_params, run.abstract_opt_state,
                                run.param_shardings, run.opt_shardings, train_iter)
    except CorruptCheckpointError as e:
      if config.restore_step >= 0:
        raise
      moved = ckpt.quarantine(step)
      log_line(f"WARNING: damaged checkpoint {ckpt.step_dir(step)} moved to {moved}; trying "
               f"an older step. ({e})")
      bad.append(moved)
  raise CorruptCheckpointError(f"No readable checkpoint in {ckpt.directory}; damaged: {bad}. "
                               "Move them away to start from scratch.")


def _restore_or_init(run: run_lib.Run, ckpt: Checkpointer, train_iter) -> TrainState:
  config = run.config
  if ckpt.steps():
    step, (params, opt_state) = _restore_latest_good(run, ckpt, train_iter)
    log_line(f"Resumed from step {step} in {ckpt.directory}.")
    step_arr = jax.device_put(np.int32(step), run.state_shardings.step)
    return TrainState(step_arr, params, opt_state)
  state = run.init_state(jax.random.key(config.seed))
  if config.init_from:
    source = Checkpointer(os.path.join(config.init_from, "checkpoints"), read_only=True)
    if source.latest_step() is None:
      raise FileNotFoundError(f"init_from={config.init_from}: no checkpoints there.")
    params = source.restore_params(source.latest_step(), run.abstract_params,
                                   run.param_shardings)
    log_line(f"Initialised parameters from {config.init_from} step {source.latest_step()}.")
    state = state.replace(params=params)
  return state


def _check_writable(workdir: str) -> None:
  """Fails at start, not at the first save an hour later, when the workdir cannot be written."""
  try:
    (epath.Path(workdir) / "checkpoints").mkdir(parents=True, exist_ok=True)
    # The pid, not jax.process_index(): jax.distributed is not initialised yet.
    probe = epath.Path(workdir) / f".write_probe.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise OSError(f"The workdir {workdir} cannot be written ({e}); nothing was trained. Pick a "
                  "writable --workdir (with free space).") from e


def batch_crc(batch: dict[str, np.ndarray]) -> int:
  """Fingerprint of this process's rows of a batch (metrics data/batch_crc32): resumed and
  uninterrupted runs must see the same batches."""
  crc = 0
  for key in sorted(batch):
    crc = zlib.crc32(np.ascontiguousarray(batch[key]).tobytes(), crc)
  return crc


def _save(ckpt: Checkpointer, run: run_lib.Run, state: TrainState, train_iter) -> None:
  step = int(jax.device_get(state.step))
  ckpt.save(step, state.params, state.opt_state, train_iter, run.config.to_dict())


def evaluate_run(run: run_lib.Run, params: Any, split: str, *, loss_limit: int | None,
                 bleu_limit: int | None, num_samples: int = 0) -> dict[str, float]:
  """Loss/perplexity on `split` and, for translation, BLEU of greedy translations."""
  batches, _ = run.eval_batches(split, loss_limit)
  sums = evaluate.accumulate((run.put_batch(b) for b in batches),
                             lambda b: run.p_eval_step(params, b))
  metrics = evaluate.summarize(sums, split)
  if run.config.task == "translation" and bleu_limit != -1:
    srcs, hyps, refs = evaluate.translate_split(
        run.dataset, split, run.encoded(split), run.tokenizer, run.translate_fn(params),
        max_source_len=run.config.data.max_source_len, batch_size=run.config.eval_batch_size,
        limit=bleu_limit or None)
    metrics[f"{split}/bleu"] = evaluate.bleu(hyps, refs)
    for s, h, r in list(zip(srcs, hyps, refs))[:num_samples]:
      log_line(f"  source:     {s}\n  reference:  {r}\n  hypothesis: {h}")
  return metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the final evaluation metrics."""
  start_time = time.time()
  config_lib.validate(config)  # Config errors first: before the workdir is touched.
  if "://" not in workdir:  # gs://bucket/... stays as it is.
    workdir = os.path.abspath(os.path.expanduser(workdir))
  _check_writable(workdir)
  sharding.maybe_initialize_distributed()  # Before anything (orbax too) starts the backend.
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                      async_save=config.async_checkpoints)
  latest = ckpt.latest_step()
  if config.restore_step < 0 and latest is not None and latest >= config.num_train_steps:
    log_line(f"Training already finished: step {latest} of {config.num_train_steps} in "
             f"{workdir}.")
    ckpt.close()
    return {}
  run = run_lib.Run(config, workdir)
  run_lib.log_run(run)
  train_iter, overlong = run.train_iterator()
  state = _restore_or_init(run, ckpt, train_iter)
  first = int(jax.device_get(state.step))
  writer = metric_writer.MetricWriter(workdir)
  progress = metric_writer.Progress(config.num_train_steps, first)
  stop = preemption.StopSignal()
  rng = jax.random.key(config.seed + 1)
  tally = {"skips": 0, "skips_total": 0, "tokens": 0.0}
  clip = config.optimizer.clip_grad_norm

  def settle(step: int, metrics: dict[str, Any], crc: int) -> None:
    """Host-side checks and logging of a finished step (read one step late, so that the host
    prepares step s+1 while the device computes step s)."""
    metrics = jax.device_get(metrics)
    loss = float(metrics["train/loss"])
    if config.nan_policy == "fail" and not math.isfinite(loss):
      raise NonFiniteLossError(f"Loss is NaN or infinite at step {step} ({loss}); the last "
                               f"checkpoint ({ckpt.latest_step()}) is kept unchanged.")
    skipped = bool(metrics.get("train/skipped", 0))
    tally["skips"] = tally["skips"] + 1 if skipped else 0
    tally["skips_total"] += int(skipped)
    if skipped:
      log_line(f"step {step}: non-finite loss or gradient, update skipped "
               f"({tally['skips']} in a row, at most {config.max_consecutive_skips}).")
    if tally["skips"] > config.max_consecutive_skips:
      raise NonFiniteLossError(f"{tally['skips']} consecutive non-finite steps up to step "
                               f"{step}: giving up (max_consecutive_skips).")
    grad_norm = float(metrics["train/grad_norm"])
    if clip > 0 and grad_norm > 10 * clip:
      log_line(f"step {step}: gradient norm {grad_norm:.4g} clipped to {clip:g}.")
    tally["tokens"] += float(metrics["train/tokens"])
    if step % config.log_every_steps == 0 or step == config.num_train_steps:
      writer.write(step, {**metrics, **{f"data/{k}": v for k, v in overlong.summary().items()},
                          "data/batch_crc32": crc, "train/skipped_total": tally["skips_total"]})
      log_line(progress.line(step, loss, tally["tokens"]))
      tally["tokens"] = 0.0

  log_line(f"Training steps {first}..{config.num_train_steps} in {workdir}")
  pending = None
  try:
    for step in range(first + 1, config.num_train_steps + 1):
      host_batch = next(train_iter)
      state, metrics = run.p_train_step(state, run.put_batch(host_batch, local=True), rng)
      if pending:
        settle(*pending)
      pending = (step, metrics, batch_crc(host_batch))
      at_save = step % config.checkpoint_every_steps == 0
      at_eval = step % config.eval_every_steps == 0 and step < config.num_train_steps
      stopping = stop.should_stop()
      if at_save or at_eval or stopping:
        settle(*pending)  # Never save (or evaluate) a step that has not been checked.
        pending = None
      if at_save or stopping:
        _save(ckpt, run, state, train_iter)
      if at_eval:
        eval_metrics = evaluate_run(run, state.params, config.data.eval_split,
                                    loss_limit=config.eval_examples,
                                    bleu_limit=config.bleu_examples or -1)
        writer.write(step, eval_metrics)
        log_line(f"eval at step {step}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in eval_metrics.items()))
      if stopping:
        ckpt.wait()
        log_line(f"Stopped by signal at step {step}; checkpoint saved. Rerun the same command "
                 "to continue.")
        return {}
    if pending:
      settle(*pending)
    _save(ckpt, run, state, train_iter)
    pipeline.log_overlong("train", overlong)
    final = evaluate_run(run, state.params, config.data.eval_split,
                         loss_limit=config.eval_examples, bleu_limit=-1)
    if config.task == "translation":
      final.update(evaluate_run(run, state.params, config.data.test_split, loss_limit=None,
                                bleu_limit=config.test_bleu_examples,
                                num_samples=config.num_samples_to_print))
    writer.write(config.num_train_steps, final)
    log_line("final: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
    log_line(f"Done in {time.time() - start_time:.0f}s; workdir {workdir}")
    return final
  finally:
    stop.restore()
    ckpt.close()
    writer.close()
