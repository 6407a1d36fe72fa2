"""The positional-encoding contract: the `PositionalEncoding` base class, its three hooks and the
registry of encodings by name (`register`, `get`, `names`, `make`, `validate`). The package's
__init__ documents the hooks; the encodings live in absolute.py, rotary.py and biases.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer import errors, registry

ADD, ROTATE, BIAS = "add", "rotate", "bias"
QUERY, KEY = "query", "key"  # The `role` argument of a rotate function.
_HOOK_METHODS = {ADD: "embed", ROTATE: "rotate_fn", BIAS: "bias"}

Array = jax.Array
_REGISTRY: registry.Registry[type["PositionalEncoding"]] = registry.Registry("positional encoding")


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
  def position_limit(cls, kwargs: dict[str, Any]) -> int | None:
    """The first position this encoding cannot represent with these arguments (None: none)."""
    del kwargs
    return None

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
