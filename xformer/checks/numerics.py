"""Numerics on the device, each against a reference computed another way:

- the loss of one batch in the config's dtype on the device against float32 on the host CPU
  (same parameters, same batch, XLA attention);
- the attention kernel the config picks (splash, cuDNN) against the XLA path on the same
  device: logits and parameter gradients of the loss;
- cached decoding, token by token, against the full forward pass over the same tokens;
- an all-reduce over every device (of every host) against its closed form.

Each check is a dict: name, ok (True / False; None when it does not apply, with `why`), the
measured error, its tolerance and what was compared. Tolerances follow the compute dtype and
the backend (TPU matmuls run float32 at bfloat16-pass precision by default).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from xformer.checks import step_timing
from xformer.runtime import sharding
from xformer.training import steps
from xformer.training.run import Run

DECODE_TOKENS = 8


def tolerance(dtype: Any, backend: str) -> float:
  """Relative error allowed between two ways of computing the same thing."""
  if jnp.dtype(dtype) != jnp.float32:
    return 3e-2
  return 1e-4 if backend == "cpu" else 1e-2


def _check(name: str, error: float, tol: float, compared: str) -> dict[str, Any]:
  return {"name": name, "ok": bool(np.isfinite(error) and error <= tol), "error": float(error),
          "tolerance": tol, "compared": compared}


def _skip(name: str, why: str) -> dict[str, Any]:
  return {"name": name, "ok": None, "error": None, "tolerance": None, "why": why}


def _rel(a: Any, b: Any) -> float:
  """max |a - b| / max |b| over every leaf (b the reference)."""
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  diff = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(a, b))
  scale = max(float(np.max(np.abs(np.asarray(y, np.float64)))) for y in b)
  return diff / max(scale, 1e-30)


def _mean_loss(task, model, label_smoothing: float):
  def loss(params, batch):
    sums = steps.loss_sums(params, batch, None, None, task=task, model=model,
                           label_smoothing=label_smoothing)
    return sums["loss"] / sums["weight"]
  return loss


def run_all(run: Run, params: Any) -> list[dict[str, Any]]:
  """Every check, on a small synthetic batch (one row per batch device)."""
  host = step_timing.synthetic_batch(run, run.batch_devices, seed=1234)  # Same on every host.
  batch = run.put_batch(host)
  return [loss_vs_host_float32(run, params, host, batch),
          kernel_vs_xla(run, params, batch),
          cached_decode_vs_full(run, params, host),
          all_reduce()]


def loss_vs_host_float32(run: Run, params: Any, host: dict, batch: dict) -> dict[str, Any]:
  cfg = run.model_config
  with jax.set_mesh(run.mesh):
    loss = jax.jit(_mean_loss(run.task, run.model, run.config.label_smoothing),
                   out_shardings=sharding.replicated(run.mesh))(params, batch)
    device = float(np.asarray(loss.addressable_shards[0].data))  # Every process holds it.
  reference = cfg.replace(dtype="float32", param_dtype="float32", logits_dtype="float32",
                          attention_impl="xla")
  model = run.task.build_model(reference)
  cpu = jax.local_devices(backend="cpu")[0]
  on_host = jax.device_put(jax.tree.map(lambda x: np.asarray(x, np.float32), _gathered(params)),
                           cpu)
  with jax.default_device(cpu):
    expected = float(jax.jit(_mean_loss(run.task, model, run.config.label_smoothing))(
        on_host, jax.device_put(host, cpu)))
  error = abs(device - expected) / abs(expected)
  return _check("loss vs float32 on host CPU", error, tolerance(cfg.dtype, jax.default_backend()),
                f"{device:.6g} ({cfg.dtype.name}, {jax.default_backend()}) vs {expected:.6g}")


def _gathered(tree: Any) -> Any:
  """Every process's full copy of a sharded tree, as numpy."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.process_allgather(tree, tiled=True)


def kernel_vs_xla(run: Run, params: Any, batch: dict) -> dict[str, Any]:
  cfg = run.model_config
  name = "attention kernel vs XLA"
  if cfg.attention_impl == "xla":
    return _skip(name, f"the config computes attention with XLA here: {run.attention}")
  xla = run.task.build_model(cfg.replace(attention_impl="xla"))

  def outputs(model, params, batch):
    loss = _mean_loss(run.task, model, run.config.label_smoothing)
    return run.task.apply(model, params, batch), jax.grad(loss)(params, batch)

  with jax.set_mesh(run.mesh):
    kernel_logits, kernel_grads = _gathered(
        jax.jit(functools.partial(outputs, run.model))(params, batch))
    xla_logits, xla_grads = _gathered(jax.jit(functools.partial(outputs, xla))(params, batch))
  error = max(_rel(kernel_logits, xla_logits), _rel(kernel_grads, xla_grads))
  return _check(name, error, tolerance(cfg.dtype, jax.default_backend()),
                f"{cfg.attention_impl} vs xla: logits and parameter gradients")


def cached_decode_vs_full(run: Run, params: Any, host: dict) -> dict[str, Any]:
  """Feeds the first DECODE_TOKENS target tokens one at a time through the cache; their logits
  against the teacher-forced forward pass over the same tokens (unsharded, on one device)."""
  cfg, task, model = run.model_config, run.task, run.model
  n = min(DECODE_TOKENS, host["targets_in"].shape[1])
  rows = {k: v[:, :n] if k.startswith("targets") else v for k, v in host.items()}
  local = jax.device_put(_gathered(params), jax.local_devices()[0])

  @jax.jit
  def both(params, rows):
    full = task.apply(model, params, rows)  # [B, n, V]
    context = task.decode_context_of(model, params, rows)
    cache = task.decode_cache(model, params, rows["targets_in"].shape[0], n, *context)

    def one(cache, token):  # token [B]
      logits, cache = task.decode_step(model, params, cache, token[:, None], *context)
      return cache, logits
    _, cached = jax.lax.scan(one, cache, rows["targets_in"].T)  # [n, B, V]
    return jnp.swapaxes(cached, 0, 1), full

  cached, full = both(local, jax.device_put(rows, jax.local_devices()[0]))
  return _check("cached decode vs full forward", _rel(cached, full),
                tolerance(cfg.dtype, jax.default_backend()),
                f"logits of {n} tokens x {len(host['targets_in'])} rows")


def all_reduce() -> dict[str, Any]:
  """Device i holds i + 1; the psum over all n of them must be n (n + 1) / 2 everywhere."""
  n = jax.device_count()
  mesh = Mesh(np.asarray(jax.devices()), ("all",))
  values = jax.make_array_from_callback(
      (n,), NamedSharding(mesh, P("all")),
      lambda index: np.arange(1, n + 1, dtype=np.float32)[index])
  summed = jax.jit(jax.shard_map(functools.partial(jax.lax.psum, axis_name="all"), mesh=mesh,
                                 in_specs=P("all"), out_specs=P("all")))(values)
  seen = [float(np.asarray(s.data)[0]) for s in summed.addressable_shards]
  expected = n * (n + 1) / 2
  error = max(abs(v - expected) for v in seen) / expected
  return _check("all-reduce over every device", error, 0.0,
                f"{n} devices, {jax.process_count()} process(es): {seen[0]:g} vs {expected:g}")

