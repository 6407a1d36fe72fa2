"""Compile a config's steps for a TPU slice or GPU host without the hardware: fits? how fast?
The library behind `python -m xformer.compile` (whose docstring says what it reports).

Compiles the real train step (and the eval step and one cached decode step) with the mesh
training builds, laid out over the target's topology, on compile-only devices (libtpu for TPU,
an XLA target description for GPU). Reports per-device memory from the compiler's buffer
assignment (arguments + outputs not aliased to them + temporaries), whether it fits the chip's
HBM, the compiler's FLOPs (GPU: XLA's count before the backend's passes, fused-attention
kernels not included) and, for TPU, libtpu's cost-model estimate of the step time, tokens/s
and MFU. Estimates, not measurements. The cost model counts a loop body once, so when the layer
stack runs as a loop the time comes from a second compile of the same step with the layers
unrolled (memory always from the step as configured).
"""

from __future__ import annotations

import copy
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections

from xformer import config_lib, targets
from xformer.data import pipeline
from xformer.runtime import sharding
from xformer.targets import flops
from xformer.training.run import Run
from xformer.training.steps import TrainState

GIB = 2.0 ** 30
NO_FIT_EXIT_CODE = 3
# Custom calls that are compute kernels (others: sharding annotations, host transfers).
_KERNEL_CALLS = ("tpu_custom_call", "__cudnn$fmha", "__gpu$xla.gpu.triton")


def build_run(config: ml_collections.ConfigDict, target: targets.Target) -> Run:
  """The Run training would build, on `target`'s compile-only devices."""
  model_config = config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh.to_dict(), targets.abstract_devices(target))
  config_lib.check_mesh(config, dict(mesh.shape), process_count=1)
  return Run(config, model_config, mesh)


def _shaped(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def _batch(run: Run, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
  data = run.config.data
  layout = pipeline.row_lengths(run.task, pipeline.Lengths(data.max_source_len,
                                                           data.max_target_len))
  return {k: jax.ShapeDtypeStruct((rows, n), jnp.int32, sharding=run.batch_sharding)
          for k, n in layout.items()}


def _cache_sharding(run: Run, path, leaf) -> NamedSharding:
  """Decode caches are split over the batch axes (axis 1 inside the scanned layer stack)."""
  if leaf.ndim == 0:
    return sharding.replicated(run.mesh)
  stacked = any(getattr(k, "key", None) == "layers" for k in path)
  spec = (None, sharding.BATCH_AXES) if stacked else (sharding.BATCH_AXES,)
  return NamedSharding(run.mesh, P(*spec))


def _train_args(run: Run) -> tuple[Any, ...]:
  rep = sharding.replicated(run.mesh)
  state = TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
                     _shaped(run.abstract_params, run.param_shardings),
                     _shaped(run.abstract_opt_state, run.opt_shardings))
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
  return state, _batch(run, run.config.batch_size), rng


def _decode_args(run: Run) -> tuple[Any, ...]:
  """Decoding as evaluation runs it: eval_batch_size sources x beam hypotheses, a cache as long
  as the longest output."""
  config = run.config
  rows = config.eval_batch_size * config.decode.beam_size
  max_len = run.task.longest_position(config.data, config.decode)
  params = _shaped(run.abstract_params, run.param_shardings)
  context = [jax.ShapeDtypeStruct(c.shape, c.dtype, sharding=run.batch_sharding)
             for c in run.task.decode_context(run.model_config, rows, config.data.max_source_len)]
  cache = jax.eval_shape(lambda p, *ctx: run.task.decode_cache(run.model, p, rows, max_len, *ctx),
                         params, *context)
  cache = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_cache_sharding(run, p, x)),
      cache)
  tokens = jax.ShapeDtypeStruct((rows, 1), jnp.int32, sharding=run.batch_sharding)
  return (params, cache, tokens, *context)


def step_and_args(run: Run, step: str) -> tuple[Any, tuple[Any, ...]]:
  """One of `run`'s jitted steps ("train", "eval", "decode": one cached token) and abstract
  arguments for it (jax.ShapeDtypeStructs with the shardings training uses)."""
  if step == "train":
    return run.p_train_step, _train_args(run)
  if step == "eval":
    params = _shaped(run.abstract_params, run.param_shardings)
    return run.p_eval_step, (params, _batch(run, run.config.eval_batch_size))
  fn = jax.jit(lambda params, cache, tokens, *ctx: run.task.decode_step(
      run.model, params, cache, tokens, *ctx))
  return fn, _decode_args(run)


def _memory(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  args, temp = m.argument_size_in_bytes / GIB, m.temp_size_in_bytes / GIB
  fresh_out = max(m.output_size_in_bytes - m.alias_size_in_bytes, 0) / GIB
  return {"arguments_gib": args, "temporaries_gib": temp,
          "peak_memory_per_device_gib": args + fresh_out + temp}


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  return {"flops": float(cost["flops"]) if cost.get("flops") else None,  # GPU: none.
          "optimal_seconds": float(cost["optimal_seconds"]) if "optimal_seconds" in cost
                             else None}


def kernel_calls(compiled_text: str, lowered_text: str) -> list[tuple[str, bool]]:
  """(name, priced) of every compute-kernel custom call of a step (Pallas TPU kernels, cuDNN
  fused attention, Triton): the kernels from the compiled HLO (partitioned kernels exist only
  there), priced when the lowered StableHLO gives the kernel a cost estimate for the cost model
  (the compiled HLO no longer shows the kernels' backend configs)."""
  priced = set()
  for line in lowered_text.splitlines():
    name = re.search(r'kernel_name = "([\w.$-]+)"', line)
    if name and "cost_estimate" in line:
      priced.add(name.group(1))
  out = set()
  for line in compiled_text.splitlines():
    m = re.search(r'%([\w.$-]+) = .*custom_call_target="([^"]+)"', line)
    if m and m.group(2).startswith(_KERNEL_CALLS):
      name = re.sub(r"\.\d+$", "", m.group(1))  # The instruction: the kernel's name.
      out.add((f"{m.group(2)} ({name})", name in priced))
  return sorted(out)


def _unrolled(run: Run) -> Run:
  """The same run with its layer stacks (and loss chunks) unrolled, so the cost model sees every
  layer and chunk. Bypasses
  ModelConfig's remat check on purpose: recomputation must be priced too, and this compile is
  never executed."""
  cfg = copy.copy(run.model_config)
  depth = max(cfg.num_encoder_layers, cfg.num_decoder_layers)
  object.__setattr__(cfg, "scan_unroll", depth)
  return Run(run.config, cfg, run.mesh, unroll_loss_chunks=True)


def compile_config(config: ml_collections.ConfigDict, target_name: str, *,
                   estimate: bool = True, steps: tuple[str, ...] = ("train", "eval", "decode")
                   ) -> dict[str, Any]:
  """Compiles `config` for `target_name`; returns the report (see the module docstring)."""
  # Executables for devices that do not exist cannot be cached (nor read back from a cache):
  # the persistent cache is off for these compiles, and as it was afterwards.
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    return _compile_config(config, targets.parse(target_name), estimate, steps)
  finally:
    jax.config.update("jax_enable_compilation_cache", cache)


def _compile_config(config: ml_collections.ConfigDict, target: targets.Target, estimate: bool,
                    steps: tuple[str, ...]) -> dict[str, Any]:
  run = build_run(config, target)
  report: dict[str, Any] = {
      "target": target.name, "topology": target.topology, "num_slices": target.num_slices,
      "devices": target.devices, "mesh": dict(run.mesh.shape), "hbm_per_device_gib":
      target.chip.hbm_gib, "peak_tflops_per_device": target.chip.peak_tflops,
      "peak_source": target.chip.source, "num_params": run.num_params,
      "attention": run.attention, "row_lengths": list(run.task.row_lengths(config.data)),
      "steps": {}}
  # GPU executables carry no cost analysis: FLOPs from lowering each step on one device.
  counted = _one_device(run, target) if target.platform != "tpu" else None
  for name in steps:
    report["steps"][name] = _compile_step(run, name, target, counted)
  train = report["steps"]["train"]
  report.update({k: train[k] for k in ("compile_s", "peak_memory_per_device_gib",
                                       "unpriced_custom_calls")})
  report["fits"] = all(s["fits"] for s in report["steps"].values())
  report.update(_throughput(run, target, train, estimate))
  return report


def _compile_step(run: Run, name: str, target: targets.Target, counted: Run | None
                  ) -> dict[str, Any]:
  """Compiles one step; its memory, FLOPs, estimated time, kernels and whether it fits. A step
  the TPU compiler itself refuses for lack of HBM is reported as not fitting. `counted`: the
  run whose lowering gives the FLOPs (GPU; see _one_device)."""
  start = time.perf_counter()
  fn, args = step_and_args(run, name)
  lowered = fn.lower(*args)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    m = re.search(r"HLO temporaries \(([\d.]+)([GMK])\) exceeds available HBM", str(e))
    if not m:
      raise
    temp = float(m.group(1)) / {"G": 1.0, "M": 1024.0, "K": 1024.0 ** 2}[m.group(2)]
    args = _argument_gib(args)
    return {"compile_s": time.perf_counter() - start, "arguments_gib": args,
            "temporaries_gib": temp, "peak_memory_per_device_gib": args + temp, "flops": None,
            "optimal_seconds": None, "kernels": [], "unpriced_custom_calls": [], "fits": False,
            "compiler_error": str(e).splitlines()[0][:300]}
  calls = kernel_calls(compiled.as_text(), lowered.as_text())
  entry = {"compile_s": time.perf_counter() - start, **_memory(compiled), **_cost(compiled),
           "kernels": [call for call, _ in calls],
           "unpriced_custom_calls": [call for call, priced in calls if not priced]}
  if target.platform != "tpu":
    entry["unpriced_custom_calls"] = []  # No cost model to price them.
    fn, args = step_and_args(counted, name)
    whole = flops.lowered_flops(fn.lower(*args))
    entry["flops"] = whole and whole / target.devices
  entry["fits"] = entry["peak_memory_per_device_gib"] <= target.chip.hbm_gib
  return entry


def _one_device(run: Run, target: targets.Target) -> Run:
  """The run as one device of `target`'s kind would train it at the same global batch, layers
  and loss chunks unrolled (a loop body counts once): its lowerings count the FLOPs of all
  devices. One device, because a lowered module holds a shard_map's body once, at one shard's
  shapes (the projected loss, per-shard kernels): over N devices it would count 1/N of that."""
  config = run.config.copy_and_resolve_references()
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return _unrolled(build_run(config, targets.parse(target.chip_name)))


def _argument_gib(args: Any) -> float:
  """Per-device GiB of abstract arguments, from their shapes and shardings."""
  total = 0
  for arg in jax.tree.leaves(args):
    shard = arg.sharding.shard_shape(arg.shape)
    total += math.prod(shard) * getattr(arg.dtype, "itemsize", 8)  # (An RNG key: 8 bytes.)
  return total / GIB


def _loops(run: Run) -> bool:
  """Whether the step has loops the cost model counts once (scanned layers, loss chunks)."""
  cfg = run.model_config
  return (cfg.scan_unroll < max(cfg.num_encoder_layers, cfg.num_decoder_layers)
          or run.config.loss_chunk > 0)


def _estimate(run: Run, cost: dict[str, Any], loops: bool
              ) -> tuple[float | None, str, float | None]:
  """(libtpu's step seconds or None, where it came from, the FLOPs per device it counted):
  from `cost` (the step's _cost) when the step has no loops, else from an unrolled compile."""
  source = "the step as configured (no layer loop)"
  if loops:
    fn, args = step_and_args(_unrolled(run), "train")
    cost, source = _cost(fn.lower(*args).compile()), "unrolled compile of the same step"
  step_s = cost["optimal_seconds"]
  if not step_s or step_s <= 0:  # (libtpu 0.0.42 returns negative times for v5e: no estimate.)
    return None, f"the cost model gave no step time ({step_s})", cost["flops"]
  return step_s, source, cost["flops"]


def estimated_step_seconds(run: Run, compiled: Any) -> tuple[float | None, str]:
  """libtpu's estimate for `run`'s train step (`compiled` for the devices present), and its
  source or why there is none (xformer.selfcheck's measured / estimated)."""
  seconds, source, _ = _estimate(run, _cost(compiled), _loops(run))
  return seconds, source


def step_size(run: Run) -> dict[str, float]:
  """Tokens of one train step (source and target rows) and the model's FLOPs for them."""
  config, cfg = run.config, run.model_config
  src = config.data.max_source_len if cfg.num_encoder_layers else 0
  tgt = config.data.max_target_len
  return {"tokens_per_step": config.batch_size * (src + tgt),
          "model_flops_per_step": flops.train_step_flops(cfg, config.batch_size, src, tgt)}


def _throughput(run: Run, target: targets.Target, train: dict[str, Any],
                estimate: bool) -> dict[str, Any]:
  out = {**step_size(run),
         "flops_per_step": train["flops"] and train["flops"] * target.devices,
         "est_step_s": None, "est_tokens_per_s": None, "est_mfu": None, "estimated_from": None}
  if target.platform != "tpu":  # GPU: no time model; FLOPs from lowerings (_one_device).
    out["estimated_from"] = "unrolled lowering of the same step on one device (FLOPs only)"
    return out
  if not estimate:
    return out
  step_s, out["estimated_from"], flops_per_device = _estimate(run, train, _loops(run))
  if flops_per_device:
    out["flops_per_step"] = flops_per_device * target.devices
  if step_s:
    out["est_step_s"] = step_s
    out["est_tokens_per_s"] = out["tokens_per_step"] / step_s
    out["est_mfu"] = out["model_flops_per_step"] / (
        target.devices * target.chip.peak_tflops * 1e12 * step_s)
  return out
