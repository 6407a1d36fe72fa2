"""The training loop, top to bottom: build, restore or initialise, train, save, evaluate.

`train_and_evaluate(config, workdir)` resumes from the newest checkpoint in `workdir` when there
is one, so re-running the same command continues an interrupted run (or reports it is done).
"""

from __future__ import annotations

import os
import time
from typing import Any

from etils import epath
import jax
import ml_collections
import numpy as np

from xformer import config_lib, errors, tasks
from xformer.data import pipeline
from xformer.data.inputs import Inputs
from xformer.evaluation import evaluator
from xformer.model import decode
from xformer.runtime import preemption, sharding
from xformer.runtime.metric_writer import MetricWriter, Progress, log_line
from xformer.training import profiling
from xformer.training.host_checks import HostChecks, NonFiniteLossError, batch_crc  # noqa: F401
from xformer.training.run import Run
from xformer.training.steps import TrainState
from xformer.workdir import lease, provenance, record
from xformer.workdir.checkpoint import Checkpointer, CorruptCheckpointError


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       force_takeover: bool = False) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the final evaluation metrics.

  Process 0 holds the workdir's lease while it trains (workdir/lease.py): a second run on the
  same workdir stops before writing anything, unless `force_takeover`."""
  start_time = time.time()
  model_config = config_lib.validate(config)  # Config errors first: before anything is touched.
  sharding.maybe_initialize_distributed()  # Before anything (orbax too) starts the backend.
  mesh = sharding.make_mesh(config.mesh.to_dict())
  config_lib.check_mesh(config, dict(mesh.shape), jax.process_count())
  workdir = _absolute(workdir)
  held = lease.acquire(workdir, force=force_takeover, say=log_line) if (
      jax.process_index() == 0) else None
  try:
    return _train(config, workdir, model_config, mesh, held, start_time)
  finally:
    if held is not None:
      held.release()


def _train(config: ml_collections.ConfigDict, workdir: str, model_config, mesh,
           held: lease.Lease | None, start_time: float) -> dict[str, float]:
  """train_and_evaluate once the config is checked and the workdir is this run's."""
  _check_writable(workdir)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                      async_save=config.async_checkpoints)
  if _finished(config, ckpt, workdir):
    return {}
  run, inputs = build(config, workdir, model_config, mesh)
  if jax.process_index() == 0:
    provenance.write(workdir)  # Versions and commit of this start: environment.jsonl.
  log_line(describe(run, inputs))
  train_iter, overlong = inputs.train_iterator()
  state = _restore_or_init(run, ckpt, train_iter)
  first = int(jax.device_get(state.step))
  ctx = evaluator.Context(run, inputs, decode.Settings(**config.decode), config.eval_batch_size)
  writer = MetricWriter(workdir)
  checks = HostChecks(config, writer, ckpt, overlong, Progress(config.num_train_steps, first))
  stop = preemption.StopSignal(every=config.stop_check_every_steps)
  profiler = profiling.StepProfiler(config.profile_steps, workdir)
  log_line(f"Training steps {first}..{config.num_train_steps} in {workdir}")
  try:
    state, stopped = _train_steps(config, run, state, train_iter, first, ckpt, ctx, writer,
                                  checks, stop, profiler, held)
    if stopped:
      return {}
    checks.flush()
    _save(ckpt, config, state, train_iter)
    pipeline.log_overlong("train", overlong)
    final = _final_evaluation(ctx, config, state.params)
    writer.write(config.num_train_steps, final)
    log_line("final: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
    log_line(f"Done in {time.time() - start_time:.0f}s; workdir {workdir}")
    return final
  finally:
    stop.restore()
    try:
      ckpt.close()  # Raises a last save's failure (StorageError), once.
    finally:
      writer.close()  # The metrics written so far stay, whatever happened.


def _train_steps(config, run, state, train_iter, first, ckpt, ctx, writer, checks, stop,
                 profiler, held) -> tuple[TrainState, bool]:
  """Steps first+1 .. num_train_steps with their checks, saves and evaluations; returns the
  state and whether a stop signal ended them early (its checkpoint saved)."""
  rng = jax.random.key(config.seed + 1)
  for step in range(first + 1, config.num_train_steps + 1):
    if held is not None:
      held.check()  # Taken over by another run: stop before writing anything more.
    ckpt.check()  # A save that failed in the background stops the run here, with its cause.
    profiler.before(step)
    waited = time.perf_counter()
    host_batch = next(train_iter)
    checks.input_seconds += time.perf_counter() - waited
    state, metrics = run.p_train_step(state, run.put_batch(host_batch, local=True), rng)
    checks.push(step, metrics, batch_crc(host_batch))  # Checks step - 1 (device runs ahead).
    profiler.after(step, state)
    at_save = step % config.checkpoint_every_steps == 0
    at_eval = step % config.eval_every_steps == 0 and step < config.num_train_steps
    stopping = stop.should_stop(step)
    if at_save or at_eval or stopping:
      checks.flush()  # Never save (or evaluate) a step that has not been checked.
    if at_save or stopping:
      _save(ckpt, config, state, train_iter)
    if at_eval:
      _log_eval(writer, step, evaluator.evaluate(
          ctx, state.params, config.data.eval_split, loss_limit=config.eval_examples,
          metric_limit=config.bleu_examples or -1))
    if stopping:
      ckpt.wait()
      log_line(f"Stopped by signal at step {step}; checkpoint saved. Rerun the same command "
               "to continue.")
      return state, True
  return state, False


def build(config: ml_collections.ConfigDict, workdir: str | None = None,
          model_config=None, mesh=None) -> tuple[Run, Inputs]:
  """A config's Run and Inputs (dataset, tokenizer); validates the config and builds the mesh
  over all devices unless given them."""
  model_config = config_lib.validate(config) if model_config is None else model_config
  if mesh is None:
    mesh = sharding.make_mesh(config.mesh.to_dict())
    config_lib.check_mesh(config, dict(mesh.shape), jax.process_count())
  inputs = Inputs.of_config(config, tasks.get(config.task), workdir)
  return Run(config, model_config.replace(vocab_size=inputs.tokenizer.vocab_size), mesh), inputs


def describe(run: Run, inputs: Inputs | None = None) -> str:
  """What was built and where it came from, printed before the first step."""
  cfg, mesh = run.model_config, run.mesh
  lines = [
      f"Model: {run.task.name}, {type(run.model).__name__} {run.config.model.variant} "
      f"(d_model {cfg.d_model}, {cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers, "
      f"{cfg.num_heads} heads, d_ff {cfg.d_ff}), posemb {cfg.posemb}, "
      f"{run.num_params:,} parameters, {cfg.dtype.name} compute, attention {run.attention}",
      f"Mesh: {' x '.join(f'{k} {v}' for k, v in mesh.shape.items())} over {mesh.devices.size} "
      f"{mesh.devices.flat[0].platform} devices ({jax.process_count()} process(es))"]
  if inputs is not None:
    data = inputs.describe()
    lines += [f"Data: {data['dataset']} from {inputs.dataset_dir} (ready in "
              f"{inputs.seconds['dataset']:.1f}s): " + ", ".join(
                  f"{k} {v:,}" for k, v in data["splits"].items()),
              f"Tokenizer: {run.config.tokenizer.model_type}, vocab {data['vocab_size']:,}, "
              f"{inputs.tokenizer.origin} ({inputs.seconds['tokenizer']:.1f}s)"]
  return "\n".join(lines)


def _absolute(workdir: str) -> str:
  """The absolute workdir (gs://... as it is)."""
  return workdir if "://" in workdir else os.path.abspath(os.path.expanduser(workdir))


def _check_writable(workdir: str) -> None:
  """A probe write: an unwritable workdir fails at start, not at the first save an hour later."""
  try:
    (epath.Path(workdir) / "checkpoints").mkdir(parents=True, exist_ok=True)
    # The pid: several processes may probe the same (shared) workdir at once.
    probe = epath.Path(workdir) / f".write_probe.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise errors.WorkdirError.unwritable(workdir, e) from e


def _finished(config: ml_collections.ConfigDict, ckpt: Checkpointer, workdir: str) -> bool:
  latest = ckpt.latest_step()
  if config.restore_step < 0 and latest is not None and latest >= config.num_train_steps:
    log_line(f"Training already finished: step {latest} of {config.num_train_steps} in "
             f"{workdir}.")
    ckpt.close()
    return True
  return False


def _restore_latest_good(run: Run, ckpt: Checkpointer, train_iter) -> tuple[int, Any]:
  """Restores the newest readable step, warning about every damaged newer one. An explicit
  config.restore_step must be readable; a directory whose every step is damaged is an error
  (never a silent fresh start)."""
  config = run.config
  if config.restore_step >= 0:
    if config.restore_step not in ckpt.steps():
      raise errors.ConfigError(f"restore_step={config.restore_step} is not a checkpoint of "
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


def _restore_or_init(run: Run, ckpt: Checkpointer, train_iter) -> TrainState:
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
      raise errors.UserError(f"init_from={config.init_from}: no checkpoints there.")
    params = source.restore_params(source.latest_step(), run.abstract_params,
                                   run.param_shardings)
    log_line(f"Initialised parameters from {config.init_from} step {source.latest_step()}.")
    state = state.replace(params=params)
  return state


def _save(ckpt: Checkpointer, config: ml_collections.ConfigDict, state: TrainState,
          train_iter) -> None:
  step = int(jax.device_get(state.step))
  ckpt.save(step, state.params, state.opt_state, train_iter, record.to_saved(config))


def _log_eval(writer: MetricWriter, step: int, metrics: dict[str, float]) -> None:
  writer.write(step, metrics)
  log_line(f"eval at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


def _final_evaluation(ctx: evaluator.Context, config: ml_collections.ConfigDict,
                      params: Any) -> dict[str, float]:
  """Loss on the eval split, then loss and the task's metrics (BLEU) on the test split."""
  final = evaluator.evaluate(ctx, params, config.data.eval_split,
                            loss_limit=config.eval_examples, metric_limit=-1)
  final.update(evaluator.evaluate(ctx, params, config.data.test_split, loss_limit=None,
                                 metric_limit=config.test_bleu_examples,
                                 num_samples=config.num_samples_to_print))
  return final
