"""Positional encodings, chosen by name: `none`, `sinusoidal`, `learned`, `rope`, `alibi`, `t5_bias`
here; `xpos`, `fire`, `kerple_log` in xformer/positional_recent.py.

Each encoding is one registered `PositionalEncoding` subclass and plugs into the model through at
most three hooks:

  * ``add``:    `embed(positions) -> [B, T, D]`, added to the scaled token embeddings;
  * ``rotate``: `rotate_fn() -> f(x [B, T, N, H], positions [B, T], role) -> x`, applied to the
                queries (role "query") and keys (role "key") of self-attention; RoPE treats both
                alike, xPos does not. Must be parameter-free: it runs inside the scanned layers;
  * ``bias``:   `bias(q_positions, k_positions) -> [B, N, T, S]`, added to self-attention logits
                (computed once per stack and shared by its layers, as in T5).

Positions are always explicit inputs ([B, T] int32), so packed rows (positions restart at every
segment) and cached decoding (positions continue from the cache index) are handled by the caller
giving the right numbers, never by an encoding guessing them.

Adding an encoding touches only this file (or any module imported before the model is built):

    @register("my_pe")
    class MyPE(PositionalEncoding):
      HOOKS = frozenset({ADD})
      def embed(self, positions):                # [B, T] -> [B, T, D]
        ...

The pure math (`sinusoidal`, `apply_rope`, `alibi_slopes`, `t5_relative_bucket`) is kept in plain
functions so tests can check it against independent numpy formulas.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xformer import errors, registry, rope_scaling

ADD, ROTATE, BIAS = "add", "rotate", "bias"
QUERY, KEY = "query", "key"  # The `role` argument of a rotate function.
_HOOK_METHODS = {ADD: "embed", ROTATE: "rotate_fn", BIAS: "bias"}

Array = jax.Array
_REGISTRY: registry.Registry[type["PositionalEncoding"]] = registry.Registry("positional encoding")


# ----------------------------------------------------------------------------------------------
# Pure math.
# ----------------------------------------------------------------------------------------------


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
  """theta_i = base^(-2i / H) for i in [0, H/2): the rotation speed of each dimension pair."""
  return base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)  # [H/2]


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
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {head_dim}.")
  return rope_scaling.rotate(x, positions, rope_frequencies(head_dim, base)).astype(x.dtype)


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


# ----------------------------------------------------------------------------------------------
# The registry and the base class.
# ----------------------------------------------------------------------------------------------


class PositionalEncoding(nn.Module):
  """Base of every encoding. Subclasses declare `HOOKS`, override the hook methods they declare,
  and may add fields (their keyword arguments, `model.posemb_kw.<name>`).

  Attributes:
    d_model: model width D.
    num_heads: attention heads N.
    max_len: the longest sequence the model is built for (size of a learned table).
    bidirectional: True for an encoder stack, False for a causal decoder stack.
    param_dtype: dtype of parameters, if the encoding has any.
  """

  HOOKS: ClassVar[frozenset[str]] = frozenset()
  # Whether positions >= max_len are impossible (a table ends there): an error, never garbage.
  LIMITED_TO_MAX_LEN: ClassVar[bool] = False

  d_model: int
  num_heads: int
  max_len: int
  bidirectional: bool = True
  param_dtype: Any = jnp.float32

  def embed(self, positions: Array) -> Array:
    """ADD hook: [B, T] positions -> [B, T, D] vector added to the scaled token embeddings."""
    raise NotImplementedError

  def rotate_fn(self) -> Callable[[Array, Array, str], Array]:
    """ROTATE hook: a parameter-free f(x [B, T, N, H], positions [B, T], role) -> x, called with
    role QUERY on the queries and KEY on the keys."""
    raise NotImplementedError

  def bias(self, q_positions: Array, k_positions: Array) -> Array:
    """BIAS hook: [B, T] and [B, S] positions -> [B, N, T, S] float32 logit bias."""
    raise NotImplementedError

  @classmethod
  def check_kwargs(cls, kwargs: dict[str, Any]) -> str | None:
    """Why these keyword argument values are invalid (a sentence), or None. Runs in validation,
    before anything is traced; override to check values, not only names."""
    del kwargs
    return None


def register(name: str):
  """Class decorator registering a `PositionalEncoding` subclass under `name`.

  Checks at import time that the class declares only known hooks and overrides each one.
  """

  def decorator(cls: type[PositionalEncoding]) -> type[PositionalEncoding]:
    unknown = set(cls.HOOKS) - set(_HOOK_METHODS)
    if unknown:
      raise ValueError(f"{cls.__name__} declares unknown hooks {sorted(unknown)}; "
                       f"valid hooks: {sorted(_HOOK_METHODS)}.")
    for hook in cls.HOOKS:
      method = _HOOK_METHODS[hook]
      if getattr(cls, method) is getattr(PositionalEncoding, method):
        raise TypeError(f"{cls.__name__} declares hook {hook!r} but does not define {method}().")
    return _REGISTRY.register(name)(cls)

  return decorator


def names() -> list[str]:
  """Names of all registered encodings."""
  return _REGISTRY.names()


def get(name: str) -> type[PositionalEncoding]:
  """The encoding class registered as `name` (KeyError listing valid names otherwise)."""
  return _REGISTRY.get(name)


_COMMON_FIELDS = {f.name for f in dataclasses.fields(PositionalEncoding)} | {"parent", "name"}


def kwarg_names(name: str) -> list[str]:
  """The keyword arguments (`model.posemb_kw.<name>`) that encoding `name` accepts."""
  return [f.name for f in dataclasses.fields(get(name)) if f.name not in _COMMON_FIELDS]


def default_kwargs(name: str) -> dict[str, Any]:
  """Encoding `name`'s keyword arguments at their defaults (typed config entries)."""
  fields = {f.name: f for f in dataclasses.fields(get(name))}
  return {k: fields[k].default for k in kwarg_names(name)}


def validate(name: str, kwargs: dict[str, Any] | None = None) -> None:
  """Raises a readable error for an unknown encoding or keyword argument. Cheap: no jax work."""
  get(name)
  bad = set(kwargs or {}) - set(kwarg_names(name))
  if bad:
    raise errors.ConfigError(f"Positional encoding {name!r} got unknown arguments {sorted(bad)}; "
                     f"it accepts: {kwarg_names(name) or 'none'}.")
  reason = get(name).check_kwargs({**default_kwargs(name), **dict(kwargs or {})})
  if reason:
    raise errors.ConfigError(f"model.posemb_kw.{name}: {reason}.")


def make(posemb: str, kwargs: dict[str, Any] | None = None, **common: Any) -> PositionalEncoding:
  """Builds encoding `posemb` with its own `kwargs` and the model-given `common` fields."""
  validate(posemb, kwargs)
  return get(posemb)(**common, **dict(kwargs or {}))


# ----------------------------------------------------------------------------------------------
# The encodings.
# ----------------------------------------------------------------------------------------------


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


@register("rope")
class RoPE(PositionalEncoding):
  """Rotary embeddings on queries and keys of self-attention (Su et al. 2021), optionally
  extended past the trained context (xformer/rope_scaling.py).

  Attributes:
    base: the frequency base b of theta_i = b^(-2i/H).
    scaling: "none", "linear" (position interpolation), "ntk" (NTK-aware) or "yarn".
    factor: s, how many times the trained context the model reads (>= 1).
    original_len: the sequence length the model was trained on (YaRN's L).
    yarn_alpha, yarn_beta: YaRN's ramp bounds (1 and 32 in the paper, for Llama).
  """

  HOOKS = frozenset({ROTATE})
  base: float = 10_000.0
  scaling: str = "none"
  factor: float = 1.0
  original_len: int = 0
  yarn_alpha: float = 1.0
  yarn_beta: float = 32.0

  @classmethod
  def check_kwargs(cls, kwargs: dict[str, Any]) -> str | None:
    return rope_scaling.check(kwargs["scaling"], kwargs["factor"], kwargs["original_len"])

  def rotate_fn(self) -> Callable[[Array, Array, str], Array]:
    if self.scaling == "none":  # Queries and keys alike.
      return lambda x, positions, role: apply_rope(x, positions, self.base)
    mscale = rope_scaling.attention_factor(self.scaling, self.factor)

    def rotate(x: Array, positions: Array, role: str) -> Array:
      del role  # Queries and keys alike: logits scale by mscale^2, i.e. 1 / t.
      theta = rope_scaling.frequencies(x.shape[-1], self.base, self.scaling, self.factor,
                                       self.original_len, self.yarn_alpha, self.yarn_beta)
      return (rope_scaling.rotate(x, positions, theta) * mscale).astype(x.dtype)

    return rotate


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


# The newer encodings register themselves on import (they subclass PositionalEncoding).
from xformer import positional_recent  # noqa: E402,F401  pylint: disable=wrong-import-position
