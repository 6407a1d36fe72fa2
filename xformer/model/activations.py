"""Feed-forward activations whose backward pass keeps one array.

Autodiff of an activation keeps what its formula made on the way: tanh-GELU five [B*T, F]
arrays, SiLU three. In a training step these are the largest residuals of a layer (F = 4 D), and
under a scanned layer stack each is a stacked buffer of its own. Written with their derivatives,
relu keeps its output (which W2's gradient keeps anyway) and gelu and silu their input; the
derivative is recomputed elementwise in the backward pass (float32, then the cotangent's dtype).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_vjp
def relu(x: Array) -> Array:
  """max(x, 0), differentiated from its output (not x or a separate mask)."""
  return jnp.maximum(x, 0)


def _relu_fwd(x):
  y = jnp.maximum(x, 0)
  return y, y


def _relu_bwd(y, g):
  return (jnp.where(y > 0, g, jnp.zeros_like(g)),)


relu.defvjp(_relu_fwd, _relu_bwd)

_GELU_C = math.sqrt(2 / math.pi)


@jax.custom_vjp
def gelu(x: Array) -> Array:
  """GELU, tanh form (Hendrycks & Gimpel 2016; flax's and GPT-2's default): the same values as
  jax.nn.gelu(x, approximate=True), differentiated from x alone."""
  return jax.nn.gelu(x, approximate=True)


def _gelu_bwd(x, g):
  x = x.astype(jnp.float32)
  t = jnp.tanh(_GELU_C * (x + 0.044715 * x ** 3))
  d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)
  return ((g * d).astype(g.dtype),)


gelu.defvjp(lambda x: (gelu(x), x), _gelu_bwd)


@jax.custom_vjp
def silu(x: Array) -> Array:
  """x sigmoid(x) (SwiGLU's gate), differentiated from x alone."""
  return jax.nn.silu(x)


def _silu_bwd(x, g):
  s = jax.nn.sigmoid(x.astype(jnp.float32))
  return ((g * s * (1 + x.astype(jnp.float32) * (1 - s))).astype(g.dtype),)


silu.defvjp(lambda x: (silu(x), x), _silu_bwd)

# name -> (activation, gated). Gated variants compute act(x W_gate) * (x W_up) (Shazeer 2020).
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], bool]] = {
    "relu": (relu, False),
    "gelu": (gelu, False),
    "swiglu": (silu, True),
    "geglu": (gelu, True),
}
