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
Bytes: each operand's blocks times the copies Pallas' pipeline makes of them as the kernel
walks its grid (a block is copied in when its index differs from the previous step's): for
rows of one block, k and v once per head, not once per query block; the row statistics and
segment ids at the tile shapes the kernels read them in ([T, 128] lanes, [8, T] sublanes).

The same wrapper hands the forward kernel's log-sum-exp on as the max over its 128 equal lanes
(`_lse_over_lanes`): XLA otherwise copies the whole lane array before keeping one lane.
"""

from __future__ import annotations

import logging
import types
from typing import Any

from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np

_PHASES = ("fwd", "dq", "dkv")
_LANES = 128  # Splash keeps row statistics (logsumexp, di) as [.., T, 128] float32 lanes.
_SUBLANES = 8


def _active(q_len: int, kv_len: int, bq: int, bkv: int, causal: bool) -> np.ndarray:
  """[A, 2] (query block, kv block) of the blocks a kernel computes per head, query-major."""
  i, j = np.meshgrid(np.arange(q_len // bq), np.arange(kv_len // bkv), indexing="ij")
  # Query block i reaches keys up to (i + 1) bq - 1.
  keep = (j * bkv <= (i + 1) * bq - 1) | (not causal)
  return np.stack([i[keep], j[keep]], axis=1)


def active_blocks(q_len: int, kv_len: int, bq: int, bkv: int, causal: bool) -> int:
  """Blocks of the [q_len, kv_len] logits a kernel computes (per head)."""
  return len(_active(q_len, kv_len, bq, bkv, causal))


def _copies(*index: np.ndarray) -> int:
  """Blocks a Pallas pipeline copies over a grid walk, given each step's block index: one at
  the first step and one at every step whose index differs from the previous step's (a
  skipped block's index is the next computed one's, so the walk lists computed blocks only)."""
  idx = np.stack(index, axis=1)
  return 1 + int(np.any(idx[1:] != idx[:-1], axis=1).sum())


def _walk(pairs: np.ndarray, heads: int, kv_major: bool) -> tuple[np.ndarray, ...]:
  """(head, query block, kv block) per computed step, in the kernel's grid order: heads, then
  query blocks, then kv blocks (forward, dq); kv blocks, heads, query blocks (dkv)."""
  if not kv_major:
    return (np.repeat(np.arange(heads), len(pairs)), np.tile(pairs[:, 0], heads),
            np.tile(pairs[:, 1], heads))
  steps = [(h, i, j) for j in np.unique(pairs[:, 1]) for h in range(heads)
           for i in pairs[pairs[:, 1] == j, 0]]
  return tuple(np.array(x) for x in zip(*steps))


def _bytes(phase: str, pairs: np.ndarray, heads: int, bq: int, bkv: int, h: int, hv: int,
           itemsize: int, causal: bool, segmented: bool, lse_out: bool) -> int:
  """HBM bytes a kernel moves: each operand's block size times the copies its index map makes
  over the grid (the operands and block shapes of jax's splash_attention_kernel)."""
  hd, i, j = _walk(pairs, heads, kv_major=phase == "dkv")
  rows, cols, by_i, by_j = _copies(hd, i), _copies(hd, j), _copies(i), _copies(j)
  q_side = rows * bq * itemsize  # Per head dimension: q / dO / o / dq blocks.
  kv_side = cols * bkv * itemsize  # k / v / dk / dv blocks.
  if phase == "fwd":
    total = q_side * (h + hv) + kv_side * (h + hv) + lse_out * rows * bq * _LANES * 4
  elif phase == "dq":
    total = q_side * (2 * h + hv) + kv_side * (h + hv) + rows * bq * 2 * 4  # lse, di [N, 1, T].
  else:  # dkv: lse and di as [N, 8, T]; k, v in, dk, dv out.
    total = q_side * (h + hv) + 2 * kv_side * (h + hv) + rows * bq * 2 * _SUBLANES * 4
  # int32 segment ids (and causal query positions), broadcast to (bq, 128) / (8, bkv) tiles;
  # the dkv kernel reads them transposed: (8, bq) and (bkv, 128).
  q_ids, kv_ids = ((_SUBLANES, _LANES) if phase == "dkv" else (_LANES, _SUBLANES))
  total += 4 * (segmented + causal) * by_i * bq * q_ids + 4 * segmented * by_j * bkv * kv_ids
  return int(total)


def estimate(phase: str, *, heads: int, q_len: int, kv_len: int, head_dim: int,
             head_dim_v: int, bq: int, bkv: int, causal: bool, itemsize: int,
             fused_dq: bool = False, segmented: bool = True,
             lse_out: bool = True) -> pl.CostEstimate:
  """The cost of one splash kernel call ("fwd", "dq" or "dkv") over `heads` heads.

  Args:
    segmented: the call has segment ids. lse_out: the forward kernel writes its log-sum-exp
      (the training forward pass; inference's does not).
  """
  if phase not in _PHASES:
    raise ValueError(f"unknown splash phase {phase!r}; valid: {_PHASES}.")
  pairs = _active(q_len, kv_len, bq, bkv, causal)
  logits = heads * len(pairs) * bq * bkv  # E, all heads.
  h, hv = head_dim, head_dim_v
  flops = 2 * logits * {"fwd": h + hv, "dq": 2 * h + hv,
                        "dkv": 2 * h + 2 * hv + (h if fused_dq else 0)}[phase]
  moved = _bytes(phase, pairs, heads, bq, bkv, h, hv, itemsize, causal, segmented, lse_out)
  if fused_dq:  # dq per kv block, summed outside the kernel.
    moved += itemsize * heads * q_len * h * (kv_len // bkv)
  return pl.CostEstimate(flops=int(flops), transcendentals=int(logits), bytes_accessed=moved)


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
    segmented = args[6] is not None
  except (KeyError, TypeError, ValueError, AttributeError, IndexError):
    return None
  lse_out = isinstance(out_shape, (list, tuple)) and out_shape[-1] is not None
  fused = phase == "dkv" and isinstance(out_shape, (list, tuple)) and len(out_shape) > 3 and (
      out_shape[3] is not None)
  return estimate(phase, heads=heads, q_len=q_len, kv_len=kv_len, head_dim=head_dim,
                  head_dim_v=head_dim_v, bq=bq, bkv=bkv, causal=args[-1] is not None,
                  itemsize=itemsize, fused_dq=fused, segmented=segmented,
                  lse_out=lse_out)


def _lse_in_lanes(phase: str, kwargs: dict[str, Any]) -> bool:
  """Whether a splash pallas_call is the forward kernel that returns its rows' log-sum-exp
  last, as [N, T, 128] float32 (the same value in each of the 128 lanes)."""
  name, shapes = kwargs.get("name") or "", kwargs.get("out_shape")
  if phase != "fwd" or not name.endswith("_residuals") or name.endswith("no_residuals"):
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
    lanes = _lse_in_lanes(phase, kwargs)

    def call(*operands):
      cost = _from_call(phase, kernel, kwargs.get("out_shape"), operands)
      out = self._real.pallas_call(kernel, cost_estimate=cost, **kwargs)(*operands)
      return _lse_over_lanes(out) if lanes else out

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
