"""Encodings that rotate queries and keys (the ROTATE hook): `rope` (with context extension,
rope_scaling.py) and `xpos`."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from xformer.positional import rope_scaling
from xformer.positional.base import KEY, QUERY, ROTATE, PositionalEncoding, register
from xformer.positional.formulas import apply_rope, xpos_scale

Array = jax.Array


@register("rope")
class RoPE(PositionalEncoding):
  """Rotary embeddings on queries and keys of self-attention (Su et al. 2021), optionally
  extended past the trained context (xformer/positional/rope_scaling.py).

  Attributes:
    base: the frequency base b of theta_i = b^(-2i/H).
    scaling: "none", "linear" (position interpolation), "ntk" (NTK-aware) or "yarn".
    factor: s, how many times the trained context the model reads (>= 1).
    original_len: the sequence length the model was trained on (YaRN's L).
    yarn_alpha, yarn_beta: YaRN's ramp bounds (1 and 32 in the paper, for Llama).
    yarn_ramp: "index" (the authors' code, as HF transformers and vLLM; the default) or
      "ratio" (the paper's equation): rope_scaling.py says how they differ.
  """

  HOOKS = frozenset({ROTATE})
  base: float = 10_000.0
  scaling: str = "none"
  factor: float = 1.0
  original_len: int = 0
  yarn_alpha: float = 1.0
  yarn_beta: float = 32.0
  yarn_ramp: str = "index"

  @classmethod
  def check_kwargs(cls, kwargs: dict[str, Any]) -> str | None:
    return rope_scaling.check(kwargs["scaling"], kwargs["factor"], kwargs["original_len"],
                              kwargs["yarn_ramp"])

  def rotate_fn(self) -> Callable[[Array, Array, str], Array]:
    mscale = rope_scaling.attention_factor(self.scaling, self.factor)  # 1 but for YaRN

    def rotate(x: Array, positions: Array, role: str) -> Array:
      del role  # Queries and keys alike: logits scale by mscale^2, i.e. 1 / t.
      theta = rope_scaling.frequencies(x.shape[-1], self.base, self.scaling, self.factor,
                                       self.original_len, self.yarn_alpha, self.yarn_beta,
                                       self.yarn_ramp)
      rotated = rope_scaling.rotate(x, positions, theta)  # [B, T, N, H] float32
      return (rotated if mscale == 1.0 else rotated * mscale).astype(x.dtype)

    return rotate


@register("xpos")
class XPos(PositionalEncoding):
  """xPos: RoPE with a per-pair exponential decay in relative distance (Sun et al. 2022).

  The rotate hook gets the role: queries are rotated and multiplied by `xpos_scale`, keys rotated
  and divided by it, so logits decay as zeta^((m - n) / scale_base) for a query at m and key at
  n <= m. The paper is causal. In a bidirectional encoder a key after the query (n > m) would be
  amplified instead (zeta^(negative) > 1), growing without bound with distance: the encoder
  stack therefore applies plain RoPE (no scale), and the decay is a decoder-side property.
  Positions are not re-centred (the paper's implementation centres them on each block): in
  float32 the keys' scale zeta_0^(-p / scale_base) overflows past `position_limit` (about 35.7K
  positions at gamma 0.4, scale_base 512), and validation refuses longer sequences.
  """

  HOOKS = frozenset({ROTATE})
  base: float = 10_000.0
  gamma: float = 0.4
  scale_base: float = 512.0

  @classmethod
  def position_limit(cls, kwargs: dict[str, Any]) -> int | None:
    """Where zeta_0^(p / scale_base), the smallest query scale, leaves float32's normal range
    (accelerators flush smaller values to zero, and the key scale 1 / it to infinity)."""
    zeta_0 = kwargs["gamma"] / (1.0 + kwargs["gamma"])
    return int(-math.log(np.finfo(np.float32).tiny) * kwargs["scale_base"] / -math.log(zeta_0))

  def rotate_fn(self) -> Callable[[Array, Array, str], Array]:
    def rotate(x: Array, positions: Array, role: str) -> Array:
      rotated = apply_rope(x, positions, base=self.base).astype(jnp.float32)
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
