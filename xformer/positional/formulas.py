"""The pure math of the positional encodings, in plain functions checked against independent
numpy formulas (tests/test_positional.py, tests/test_positional_recent.py): sinusoids, RoPE,
ALiBi's slopes, T5's buckets, xPos's scale, FIRE's input, KERPLE-log's bias. The registered
encodings (absolute.py, rotary.py, biases.py) are built from them; xformer.positional re-exports
them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from xformer.positional import rope_scaling

Array = jax.Array


def sinusoidal(positions: Array, d_model: int, max_timescale: float = 10_000.0) -> Array:
  """The sinusoids of "Attention Is All You Need", section 3.5, exactly.

  PE(pos, 2i) = sin(pos / 10000^(2i / d_model)),  PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model)):
  sines on even dimensions and cosines on odd ones, interleaved as in the paper (many codebases
  concatenate [sin, cos] instead, which is a permutation of the same features).

  Args:
    positions: integer positions, any shape [...], e.g. [T] or [B, T].
    d_model: model width D (even).
    max_timescale: the 10000 of the paper.

  Returns:
    float32 array [..., D].
  """
  if d_model % 2:
    raise ValueError(f"sinusoidal encoding needs an even d_model, got {d_model}.")
  two_i = jnp.arange(0, d_model, 2, dtype=jnp.float32)  # [D/2]
  inv_freq = max_timescale ** (-two_i / d_model)  # [D/2]
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq  # [..., D/2]
  pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [..., D/2, 2]
  return pe.reshape(*angles.shape[:-1], d_model)  # [..., D]: sin, cos, sin, cos, ...


def rope_frequencies(head_dim: int, base: float = 10_000.0) -> Array:
  """theta_i = base^(-2i / H) for i in [0, H/2): the rotation speed of each dimension pair
  (rope_scaling.frequencies without a scaling)."""
  return jnp.asarray(rope_scaling.frequencies(head_dim, base))  # [H/2]


def apply_rope(x: Array, positions: Array, base: float = 10_000.0) -> Array:
  """Rotary position embedding (Su et al. 2021) of queries or keys.

  Pairing convention: "half split" (as in GPT-NeoX, Llama and gemma): dimension i is paired with
  dimension i + H/2, and pair i is rotated by the angle position * theta_i. Viewing each pair as
  the complex number x[i] + j * x[i + H/2], RoPE multiplies it by exp(j * position * theta_i), so
  <rope(q, m), rope(k, n)> depends on m - n only. (The RoFormer paper pairs 2i with 2i+1; the two
  conventions are a fixed permutation of the head dimensions apart and train equally well, but
  checkpoints are not interchangeable.)

  Args:
    x: [B, T, N, H] queries or keys, H even.
    positions: [B, T] or [T] integer positions.
    base: the frequency base (10000 in the paper).

  Returns:
    [B, T, N, H], same dtype as x (the rotation is computed in float32).
  """
  theta = rope_scaling.frequencies(x.shape[-1], base)
  return rope_scaling.rotate(x, positions, theta).astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Head slopes of ALiBi (Press et al. 2022): the geometric sequence starting at 2^(-8/n).

  For n a power of two the slopes are r, r^2, ..., r^n with r = 2^(-8/n). Otherwise, as in the
  paper's code, the slopes of the nearest lower power of two m are followed by every other slope
  of 2m, up to n heads.
  """

  def power_of_two(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  if math.log2(num_heads).is_integer():
    slopes = power_of_two(num_heads)
  else:
    m = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(m) + power_of_two(2 * m)[0::2][: num_heads - m]
  return np.asarray(slopes, np.float32)


def t5_relative_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Array:
  """T5's bucketing of relative positions (key - query): exact when small, logarithmic when far.

  Distances at or beyond `max_distance` share the last bucket, which is what lets T5 biases run
  on sequences longer than those seen in training.
  """
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  n_float = jnp.maximum(n, 1).astype(jnp.float32)  # log(0) guard; small n use the exact branch.
  val_if_large = max_exact + (
      jnp.log(n_float / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


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
