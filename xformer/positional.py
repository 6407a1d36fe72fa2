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
functions in xformer/positional_math.py (re-exported here) so tests can check it against
independent numpy formulas.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer import errors, registry, rope_scaling
# The pure math lives in xformer/positional_math.py; re-exported here, where users look for it.
from xformer.positional_math import (  # noqa: F401  pylint: disable=unused-import
    alibi_slopes, apply_rope, rope_frequencies, sinusoidal, t5_relative_bucket)

ADD, ROTATE, BIAS = "add", "rotate", "bias"
QUERY, KEY = "query", "key"  # The `role` argument of a rotate function.
_HOOK_METHODS = {ADD: "embed", ROTATE: "rotate_fn", BIAS: "bias"}

Array = jax.Array
_REGISTRY: registry.Registry[type["PositionalEncoding"]] = registry.Registry("positional encoding")


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
    mscale = rope_scaling.attention_factor(self.scaling, self.factor)  # 1 but for YaRN

    def rotate(x: Array, positions: Array, role: str) -> Array:
      del role  # Queries and keys alike: logits scale by mscale^2, i.e. 1 / t.
      theta = rope_scaling.frequencies(x.shape[-1], self.base, self.scaling, self.factor,
                                       self.original_len, self.yarn_alpha, self.yarn_beta)
      rotated = rope_scaling.rotate(x, positions, theta)  # [B, T, N, H] float32
      return (rotated if mscale == 1.0 else rotated * mscale).astype(x.dtype)

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
