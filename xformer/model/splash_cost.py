"""Cost estimates for the splash attention kernels, so that libtpu's cost model prices them.

The Pallas splash kernels (`jax.experimental.pallas.ops.tpu.splash_attention`) call
`pl.pallas_call` without a `cost_estimate`, and the TPU cost model counts a custom call without
one as free: a step's estimated time is then a lower bound. The Pallas API takes the estimate
(`pl.CostEstimate`: FLOPs, transcendentals, bytes accessed) but the kernel module does not pass
it through, so `install()` gives that module a `pallas_call` that adds one to each of its three
kernels (forward, dq, dkv), computed here from the operands' shapes, the block sizes and the
blocks the mask leaves to compute. Numerics do not change: only XLA's cost model and scheduler
read the estimate.

Per head, a kernel computes E = (active blocks) x bq x bkv logits, where a causal mask skips
the blocks wholly above the diagonal (a block the diagonal crosses is computed in full) and a
full mask computes every block (segment ids mask inside blocks, they skip nothing):
  forward  QK^T, PV                          2 E (H + Hv) FLOPs, E exp
  dq       QK^T, dO V^T, dS K                2 E (2 H + Hv)     , E exp
  dkv      QK^T, P^T dO, dO V^T, dS^T Q      2 E (2 H + 2 Hv)   , E exp (+ 2 E H fused dq)
Bytes: the kernel's own rows once (q and o, or k, v and their gradients), the other side's
blocks once per active block, plus the float32 row statistics.

The same wrapper hands the forward kernel's log-sum-exp on as the max over its 128 equal lanes
(`_lse_over_lanes`): XLA otherwise copies the whole lane array before keeping one lane.
"""

from __future__ import annotations

import logging
import types
from typing import Any

from jax.experimental import pallas as pl
import jax.numpy as jnp

_PHASES = ("fwd", "dq", "dkv")
_LANES = 128  # Splash keeps row statistics (logsumexp, di) as [.., T, 128] float32 lanes.


def active_blocks(q_len: int, kv_len: int, bq: int, bkv: int, causal: bool) -> int:
  """Blocks of the [q_len, kv_len] logits a kernel computes (per head)."""
  nq, nkv = q_len // bq, kv_len // bkv
  if not causal:
    return nq * nkv
  # Query block i reaches keys up to (i + 1) bq - 1: kv blocks 0 .. that // bkv.
  return sum(min(nkv, ((i + 1) * bq - 1) // bkv + 1) for i in range(nq))


def estimate(phase: str, *, heads: int, q_len: int, kv_len: int, head_dim: int,
             head_dim_v: int, bq: int, bkv: int, causal: bool, itemsize: int,
             fused_dq: bool = False) -> pl.CostEstimate:
  """The cost of one splash kernel call ("fwd", "dq" or "dkv") over `heads` heads."""
  blocks = active_blocks(q_len, kv_len, bq, bkv, causal)
  logits = heads * blocks * bq * bkv  # E, all heads.
  h, hv = head_dim, head_dim_v
  stats = 4 * heads * _LANES  # One float32 statistic row (logsumexp or di) per token.
  if phase == "fwd":
    flops = 2 * logits * (h + hv)
    own = itemsize * heads * q_len * (h + hv) + stats * q_len  # q, o, logsumexp.
    other = itemsize * heads * blocks * bkv * (h + hv)  # k, v blocks.
  elif phase == "dq":
    flops = 2 * logits * (2 * h + hv)
    own = itemsize * heads * q_len * (2 * h + hv) + 2 * stats * q_len  # q, dO, dq; lse, di.
    other = itemsize * heads * blocks * bkv * (h + hv)
  elif phase == "dkv":
    flops = 2 * logits * (2 * h + 2 * hv + (h if fused_dq else 0))
    own = 2 * itemsize * heads * kv_len * (h + hv)  # k, v, dk, dv.
    if fused_dq:  # dq per kv block, summed outside the kernel.
      own += itemsize * heads * q_len * h * (kv_len // bkv)
    other = heads * blocks * bq * (itemsize * (h + hv) + 2 * 4)  # q, dO blocks; lse, di.
  else:
    raise ValueError(f"unknown splash phase {phase!r}; valid: {_PHASES}.")
  return pl.CostEstimate(flops=int(flops), transcendentals=int(logits),
                         bytes_accessed=int(own + other))


def _phase(name: str) -> str | None:
  """"splash_mha_dkv_segmented_no_residuals" -> "dkv"; None for other kernels."""
  parts = name.split("_")
  if len(parts) < 3 or parts[0] != "splash" or parts[2] not in _PHASES:
    return None
  return parts[2]


def _from_call(phase: str, kernel: Any, out_shape: Any, args: tuple[Any, ...]
               ) -> pl.CostEstimate | None:
  """The estimate of a splash pallas_call from its operands: (data_next, block_mask, mask_next,
  q [N, T, H], k [N, S, H], v [N, S, Hv], ..., q_sequence), each of q, k, v as [N, H, T] when
  its layout is SEQ_MINOR, q_sequence given for causal (computed) masks. None when the
  operands are not laid out as this was written for."""
  keywords = getattr(kernel, "keywords", {})
  try:
    q, k, v = (_head_minor(x.shape, keywords.get(f"{n}_layout")) for x, n in zip(args[3:6], "qkv"))
    heads, q_len, head_dim = q
    kv_len, head_dim_v = k[1], v[2]
    bq, bkv = keywords["bq"], keywords["bkv"]
    itemsize = args[3].dtype.itemsize
  except (KeyError, TypeError, ValueError, AttributeError):
    return None
  fused = phase == "dkv" and isinstance(out_shape, (list, tuple)) and len(out_shape) > 3 and (
      out_shape[3] is not None)
  return estimate(phase, heads=heads, q_len=q_len, kv_len=kv_len, head_dim=head_dim,
                  head_dim_v=head_dim_v, bq=bq, bkv=bkv, causal=args[-1] is not None,
                  itemsize=itemsize, fused_dq=fused)


def _lse_in_lanes(kwargs: dict[str, Any]) -> bool:
  """Whether a pallas_call is the forward kernel that returns its rows' log-sum-exp last, as
  [N, T, 128] float32 (the same value in each of the 128 lanes)."""
  name, shapes = kwargs.get("name") or "", kwargs.get("out_shape")
  if _phase(name) != "fwd" or not name.endswith("_residuals") or name.endswith("no_residuals"):
    return False
  last = shapes[-1] if isinstance(shapes, (list, tuple)) and shapes else None
  return (getattr(last, "dtype", None) == jnp.float32 and len(last.shape) == 3
          and last.shape[-1] == _LANES)


def _lse_over_lanes(out: Any) -> Any:
  """The forward kernel's outputs with its log-sum-exp as the max over its (equal) lanes.

  The kernel writes m + log l, both broadcast over 128 lanes, and the kernel module keeps lane 0
  (`lse[..., 0]`). On TPU XLA lays that slice out by first copying the whole [N, T, 128]
  float32 array into a sequence-minor layout: per attention layer a read and a write of 128x
  the statistic, then the slice. Given the lanes' max, XLA folds the module's slice of the
  broadcast into one reduction that reads the array once. The same numbers either way.
  """
  lse = out[-1]
  return type(out)([*out[:-1], jnp.broadcast_to(jnp.max(lse, axis=-1, keepdims=True),
                                                 lse.shape)])


def _head_minor(shape: tuple[int, ...], layout: Any) -> tuple[int, ...]:
  """[N, T, H] of an operand given as [N, H, T] when its layout is SEQ_MINOR."""
  if getattr(layout, "name", "HEAD_DIM_MINOR") == "SEQ_MINOR":
    return (*shape[:-2], shape[-1], shape[-2])
  return tuple(shape)


class _PallasWithCosts(types.ModuleType):
  """`jax.experimental.pallas` as the splash module sees it: the same, except that
  `pallas_call` of a splash kernel without a cost estimate gets one."""

  def __init__(self, real: types.ModuleType):
    super().__init__(real.__name__)
    self._real = real

  def __getattr__(self, name: str) -> Any:
    return getattr(self._real, name)

  def pallas_call(self, kernel, *args, **kwargs):
    phase = _phase(kwargs.get("name") or "")
    if phase is None or kwargs.get("cost_estimate") is not None or args:
      return self._real.pallas_call(kernel, *args, **kwargs)

    def call(*operands):
      cost = _from_call(phase, kernel, kwargs.get("out_shape"), operands)
      out = self._real.pallas_call(kernel, cost_estimate=cost, **kwargs)(*operands)
      return _lse_over_lanes(out) if _lse_in_lanes(kwargs) else out

    return call


def install(kernel_module: types.ModuleType) -> bool:
  """Makes `kernel_module`'s (splash_attention_kernel's) pallas_calls carry cost estimates.
  Idempotent; False (and a warning) if the module no longer calls `pl.pallas_call`."""
  current = getattr(kernel_module, "pl", None)
  if isinstance(current, _PallasWithCosts):
    return True
  if current is not pl:
    logging.warning("splash attention: %s has no `pl` module to add cost estimates to; the "
                    "TPU cost model will not price its kernels.", kernel_module.__name__)
    return False
  kernel_module.pl = _PallasWithCosts(pl)
  return True
