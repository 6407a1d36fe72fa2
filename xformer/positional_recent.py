"""The newer positional encodings: `xpos`, `fire`, `kerple_log` (registered on import by
xformer/positional.py). Hooks and conventions as there; the pure math is in plain functions so
tests can check it against the papers' formulas in numpy.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer import positional
from xformer.positional import BIAS, KEY, QUERY, ROTATE, PositionalEncoding, register

Array = jax.Array


def xpos_scale(positions: Array, head_dim: int, gamma: float = 0.4,
               scale_base: float = 512.0) -> Array:
  """zeta_i ** (position / scale_base) with zeta_i = (2i / H + gamma) / (1 + gamma), i < H/2.

  Sun et al. 2022 ("A Length-Extrapolatable Transformer", eq. 9 and section 3.2): queries are
  multiplied by this, keys divided by it, so q_m . k_n carries zeta^((m - n) / scale_base): a
  decay with distance, fastest for the fastest-rotating pairs.

  Args:
    positions: [B, T] (or [T]) integer positions.
    head_dim: H (even).

  Returns:
    float32 [..., H/2].
  """
  zeta = (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim + gamma) / (1.0 + gamma)
  return zeta ** (jnp.asarray(positions, jnp.float32)[..., None] / scale_base)  # [..., H/2]


def fire_input(q_positions: Array, k_positions: Array, c: Array, threshold: Array,
               eps: float = 1e-6) -> Array:
  """FIRE's normalised distance psi(i - j) / psi(max(L, i)) with psi(x) = log(c x + 1).

  Li et al. 2023 ("Functional Interpolation for Relative Positions Improves Long Context
  Transformers", eq. 5 with progressive interpolation and the threshold L). Keys after the
  query (j > i, only seen by a bidirectional encoder) get the same magnitude with a minus sign.

  Returns:
    float32 [B, T, S].
  """
  q = jnp.asarray(q_positions, jnp.float32)
  rel = q[:, :, None] - jnp.asarray(k_positions, jnp.float32)[:, None, :]  # [B, T, S]: i - j
  c = jnp.abs(c)
  psi = lambda x: jnp.log(c * x + 1.0)  # noqa: E731
  norm = psi(jnp.maximum(q, jnp.abs(threshold)))[:, :, None]  # [B, T, 1]
  return jnp.sign(rel) * psi(jnp.abs(rel)) / (norm + eps)  # [B, T, S]


def kerple_log_bias(q_positions: Array, k_positions: Array, r1: Array, r2: Array) -> Array:
  """KERPLE-log (Chi et al. 2022, eq. 9): -r1 log(1 + r2 |m - n|) per head; r1, r2 [N] > 0.

  Returns:
    float32 [B, N, T, S].
  """
  distance = jnp.abs(q_positions[:, :, None] - k_positions[:, None, :]).astype(jnp.float32)
  r1, r2 = r1[None, :, None, None], r2[None, :, None, None]  # [1, N, 1, 1]
  return -r1 * jnp.log1p(r2 * distance[:, None])  # [B, N, T, S]


@register("xpos")
class XPos(PositionalEncoding):
  """xPos: RoPE with a per-pair exponential decay in relative distance (Sun et al. 2022).

  The rotate hook gets the role: queries are rotated and multiplied by `xpos_scale`, keys rotated
  and divided by it, so logits decay as zeta^((m - n) / scale_base) for a query at m and key at
  n <= m. The paper is causal. In a bidirectional encoder a key after the query (n > m) would be
  amplified instead (zeta^(negative) > 1), growing without bound with distance: the encoder
  stack therefore applies plain RoPE (no scale), and the decay is a decoder-side property.
  Positions are not re-centred (the paper's implementation centres them on each block); in float32
  queries' and keys' scales stay representable to tens of thousands of positions at scale_base 512.
  """

  HOOKS = frozenset({ROTATE})
  base: float = 10_000.0
  gamma: float = 0.4
  scale_base: float = 512.0

  def rotate_fn(self) -> Callable[[Array, Array, str], Array]:
    def rotate(x: Array, positions: Array, role: str) -> Array:
      rotated = positional.apply_rope(x, positions, base=self.base).astype(jnp.float32)
      if self.bidirectional:
        return rotated.astype(x.dtype)
      scale = xpos_scale(jnp.broadcast_to(positions, x.shape[:2]), x.shape[-1], self.gamma,
                         self.scale_base)  # [B, T, H/2]
      scale = jnp.concatenate([scale, scale], axis=-1)[:, :, None, :]  # [B, T, 1, H]
      if role == QUERY:
        return (rotated * scale).astype(x.dtype)
      if role == KEY:
        return (rotated / scale).astype(x.dtype)
      raise ValueError(f"rotate role must be {QUERY!r} or {KEY!r}, got {role!r}.")

    return rotate


@register("fire")
class FIRE(PositionalEncoding):
  """FIRE: a learned MLP of the normalised log distance, as a per-head logit bias (Li et al. 2023).

  bias(i, j) = MLP(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1), with c and the threshold
  L learned (L = |threshold_scale| * init_threshold, so its gradient is well-scaled); the MLP is
  1 -> mlp_width (ReLU) -> N heads. Normalising by the query position maps every distance the
  query can see into [0, 1], which is what lets FIRE read past the trained length. Computed once
  per stack and shared by its layers, as T5's bias is here (the paper learns one per layer).
  Defined for causal attention: in a bidirectional encoder a key after the query enters the MLP
  as the negative of the same normalised distance (`fire_input`), so the MLP can tell left from
  right; its magnitude can exceed 1 there, since the normaliser only covers the keys before i.
  """

  HOOKS = frozenset({BIAS})
  mlp_width: int = 32
  init_c: float = 0.1
  init_threshold: float = 512.0

  @nn.compact
  def bias(self, q_positions: Array, k_positions: Array) -> Array:
    scalar = lambda name, value: self.param(  # noqa: E731
        name, nn.with_logical_partitioning(nn.initializers.constant(value), ()), (), jnp.float32)
    c, threshold_scale = scalar("c", self.init_c), scalar("threshold_scale", 1.0)
    x = fire_input(q_positions, k_positions, c, threshold_scale * self.init_threshold)  # [B,T,S]
    kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
    dense = lambda n, axes, name: nn.Dense(  # noqa: E731
        n, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]), name=name, **kw)
    h = nn.relu(dense(self.mlp_width, (None, None), "mlp_in")(x[..., None]))  # [B, T, S, W]
    out = dense(self.num_heads, (None, "heads"), "mlp_out")(h)  # [B, T, S, N]
    return out.transpose(0, 3, 1, 2)  # [B, N, T, S]


@register("kerple_log")
class KerpleLog(PositionalEncoding):
  """KERPLE-log: -r1 log(1 + r2 |m - n|), learned r1, r2 > 0 per head (Chi et al. 2022).

  A conditionally positive definite kernel of the distance, so it is symmetric and applies as is
  to a bidirectional encoder. r1 and r2 start uniform in (0, 2) and (0, 1) as in the paper's code
  and are clipped at `min_value` (the paper's positivity constraint).
  """

  HOOKS = frozenset({BIAS})
  min_value: float = 1e-2

  @nn.compact
  def bias(self, q_positions: Array, k_positions: Array) -> Array:
    def positive(name: str, scale: float) -> Array:
      init = nn.with_logical_partitioning(nn.initializers.uniform(scale), ("heads",))
      return jnp.maximum(self.param(name, init, (self.num_heads,), jnp.float32), self.min_value)

    return kerple_log_bias(q_positions, k_positions, positive("r1", 2.0), positive("r2", 1.0))
