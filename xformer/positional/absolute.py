"""Encodings added to the token embeddings (the ADD hook), and none at all: `none`,
`sinusoidal` (the paper), `learned` (a table)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer.positional.base import ADD, PositionalEncoding, register
from xformer.positional.formulas import sinusoidal

Array = jax.Array


@register("none")
class NoPE(PositionalEncoding):
  """No positional information at all (NoPE). Decoder-only models can still infer positions
  from the causal mask (Kazemnejad et al. 2023); an encoder sees a bag of words."""

  HOOKS = frozenset()


@register("sinusoidal")
class Sinusoidal(PositionalEncoding):
  """Fixed sinusoids added to the embeddings (the paper, section 3.5)."""

  HOOKS = frozenset({ADD})
  max_timescale: float = 10_000.0

  def embed(self, positions: Array) -> Array:
    return sinusoidal(positions, self.d_model, self.max_timescale)  # [B, T, D]


@register("learned")
class Learned(PositionalEncoding):
  """A learned [max_len, D] table added to the embeddings (GPT-2, BERT)."""

  HOOKS = frozenset({ADD})
  LIMITED_TO_MAX_LEN = True
  init_stddev: float = 0.02

  @nn.compact
  def embed(self, positions: Array) -> Array:
    if positions.shape[-1] > self.max_len:
      raise ValueError(
          f"Learned positional table has {self.max_len} positions but a sequence of length "
          f"{positions.shape[-1]} was given; raise model.max_len (and retrain) or pick an "
          "encoding that extrapolates.")
    table = self.param(
        "table",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev), (None, "embed")),
        (self.max_len, self.d_model),
        self.param_dtype,
    )  # [max_len, D]
    # A position past the table (only possible with explicit positions under jit, where values
    # cannot be checked) reads NaN: a loud failure instead of a silently clipped lookup.
    return jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan)  # [B, T, D]
