"""The config's real train step on the devices present, timed on a synthetic batch of its shape.

Measured: compile time, the median step time over N timed steps after warm-up (each step
waited for), tokens/s, MFU against the chip's peak (xformer/targets/catalog.py), the device's
peak memory (`memory_stats()`, where the backend keeps it) next to the compile's
`memory_analysis()`; on TPU also libtpu's cost-model estimate for this device and the ratio
measured / estimated. A field the backend cannot give is None, with the reason in `why_none`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from xformer import config_lib, targets
from xformer.data import pipeline
from xformer.runtime import sharding
from xformer.targets import compiler
from xformer.training.run import Run

GIB = 2.0 ** 30
WARMUP_STEPS = 2


def build_run(config: ml_collections.ConfigDict) -> Run:
  """The Run training builds for `config` on the devices present (vocabulary: the config's)."""
  model_config = config_lib.validate(config)
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(config.mesh.to_dict())
  config_lib.check_mesh(config, dict(mesh.shape), jax.process_count())
  return Run(config, model_config, mesh)


def synthetic_batch(run: Run, rows: int, seed: int) -> dict[str, np.ndarray]:
  """`rows` rows of the config's features: random tokens, one whole segment per row."""
  data, vocab = run.config.data, run.model_config.vocab_size
  layout = pipeline.row_lengths(run.task, pipeline.Lengths(data.max_source_len,
                                                           data.max_target_len))
  rng = np.random.default_rng(seed)
  batch = {}
  for key, length in layout.items():
    if key.endswith("_positions"):
      batch[key] = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy()
    elif key.endswith("_segment_ids"):
      batch[key] = np.ones((rows, length), np.int32)
    else:  # Ids above the special tokens (pad 0, EOS 1, BOS 2, unk 3).
      batch[key] = rng.integers(4, vocab, (rows, length), dtype=np.int32)
  return batch


def _device_peak_gib() -> tuple[float | None, str | None]:
  stats = [d.memory_stats() for d in jax.local_devices()]
  peaks = [s.get("peak_bytes_in_use") for s in stats if s]
  if not peaks or None in peaks:
    return None, f"the {jax.default_backend()} backend keeps no memory_stats()"
  return max(peaks) / GIB, None


def measure(run: Run, steps: int) -> tuple[dict[str, Any], Any]:
  """Times `steps` train steps after warm-up; returns the figures and the trained state."""
  config = run.config
  rows = config.batch_size // jax.process_count()  # This process's rows of the global batch.
  batch = run.put_batch(synthetic_batch(run, rows, seed=jax.process_index()), local=True)
  state, rng = run.init_state(jax.random.key(config.seed)), jax.random.key(config.seed + 1)
  start = time.perf_counter()
  lowered = run.p_train_step.lower(state, batch, rng)
  compiled = lowered.compile()
  out: dict[str, Any] = {"compile_s": time.perf_counter() - start, "why_none": {}}
  times, losses = [], []
  for i in range(WARMUP_STEPS + steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    if i >= WARMUP_STEPS:
      times.append(time.perf_counter() - start)
      losses.append(float(metrics["train/loss"]))
  out.update(step_s=statistics.median(times), step_s_all=times, losses=losses)
  _throughput(run, out)
  out["measured_peak_gib"], why = _device_peak_gib()
  if why:
    out["why_none"]["measured_peak_gib"] = why
  memory = compiled.memory_analysis()
  out["compiled_memory_gib"] = (None if memory is None else {
      "arguments": memory.argument_size_in_bytes / GIB,
      "temporaries": memory.temp_size_in_bytes / GIB,
      "outputs_not_aliased": max(memory.output_size_in_bytes - memory.alias_size_in_bytes,
                                 0) / GIB})
  _estimate(run, compiled, out)
  return out, state


def _throughput(run: Run, out: dict[str, Any]) -> None:
  out.update(compiler.step_size(run))
  out["tokens_per_s"] = out["tokens_per_step"] / out["step_s"]
  device = jax.devices()[0]
  chip = targets.chip_of_device_kind(device.device_kind)
  out["peak_tflops_per_device"] = chip.peak_tflops if chip else None
  if chip is None:
    out["mfu"] = None
    out["why_none"]["mfu"] = out["why_none"]["peak_tflops_per_device"] = (
        f"no peak known for device kind {device.device_kind!r}")
    return
  out["mfu"] = out["model_flops_per_step"] / (
      out["step_s"] * jax.device_count() * chip.peak_tflops * 1e12)


def _estimate(run: Run, compiled: Any, out: dict[str, Any]) -> None:
  """libtpu's cost-model step time for these devices, and measured / estimated."""
  out["est_step_s"] = out["measured_over_estimated"] = None
  why = out["why_none"]
  if jax.default_backend() != "tpu":
    why["est_step_s"] = why["measured_over_estimated"] = (
        "the cost model's step time exists on TPU only")
    return
  seconds, source = compiler.estimated_step_seconds(run, compiled)
  if seconds is None:
    why["est_step_s"] = why["measured_over_estimated"] = source
    return
  out["est_step_s"], out["estimated_from"] = seconds, source
  out["measured_over_estimated"] = out["step_s"] / seconds
