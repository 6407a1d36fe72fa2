"""Encodings that add a bias to the attention logits (the BIAS hook), computed once per stack and
shared by its layers: `alibi`, `t5_bias`, `fire`, `kerple_log`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer.positional.base import BIAS, PositionalEncoding, register
from xformer.positional.formulas import (
  alibi_slopes,
  fire_input,
  kerple_log_bias,
  t5_relative_bucket,
)

Array = jax.Array


@register("alibi")
class ALiBi(PositionalEncoding):
  """Linear distance penalties on the attention logits (Press et al. 2022)."""

  HOOKS = frozenset({BIAS})

  def bias(self, q_positions: Array, k_positions: Array) -> Array:
    slopes = jnp.asarray(alibi_slopes(self.num_heads))  # [N]
    distance = jnp.abs(q_positions[:, :, None] - k_positions[:, None, :])  # [B, T, S]
    return -slopes[None, :, None, None] * distance[:, None].astype(jnp.float32)  # [B, N, T, S]


@register("t5_bias")
class T5Bias(PositionalEncoding):
  """T5's learned per-head bias over bucketed relative positions (Raffel et al. 2020)."""

  HOOKS = frozenset({BIAS})
  num_buckets: int = 32
  max_distance: int = 128

  @nn.compact
  def bias(self, q_positions: Array, k_positions: Array) -> Array:
    relative = k_positions[:, None, :] - q_positions[:, :, None]  # [B, T, S]
    buckets = t5_relative_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
    table = self.param(
        "rel_bias",
        nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), (None, "heads")),
        (self.num_buckets, self.num_heads),
        self.param_dtype,
    )  # [buckets, N]
    values = jnp.take(table, buckets, axis=0).astype(jnp.float32)  # [B, T, S, N]
    return values.transpose(0, 3, 1, 2)  # [B, N, T, S]


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
  and are read clipped at `min_value` (the paper's positivity constraint), with the gradient
  passed straight through so a parameter below the bound can recover.
  """

  HOOKS = frozenset({BIAS})
  min_value: float = 1e-2

  @nn.compact
  def bias(self, q_positions: Array, k_positions: Array) -> Array:
    def positive(name: str, scale: float) -> Array:
      init = nn.with_logical_partitioning(nn.initializers.uniform(scale), ("heads",))
      value = self.param(name, init, (self.num_heads,), jnp.float32)
      # Straight through: the forward pass reads the value clipped at min_value, the gradient
      # reaches the parameter as if unclipped, so one pushed below the bound can come back (the
      # authors clamp the parameter itself after each step; jnp.maximum's zero gradient below
      # the bound would hold it there for good).
      return value + jax.lax.stop_gradient(jnp.maximum(value, self.min_value) - value)

    return kerple_log_bias(q_positions, k_positions, positive("r1", 2.0), positive("r2", 1.0))
