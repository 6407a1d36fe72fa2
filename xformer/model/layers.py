"""Small building blocks: logical axis names, dense projections, the feed-forward block, norms.

Every parameter carries logical axis names (constants below); `xformer.sharding` maps them onto a
device mesh, so nothing here knows about devices.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from xformer.model.activations import ACTIVATIONS

# Logical axis names of parameters (and, with a leading LAYERS axis, of scanned layer stacks).
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
LAYERS = "layers"

Array = jax.Array
Dtype = Any
default_kernel_init = nn.initializers.xavier_uniform()


def matmul_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                       preferred_element_type=None) -> Array:
  """`lax.dot_general` for a dense layer, computed as one 2-D matrix product.

  x [..., *K] against w [*K, *F] (contracting x's trailing and w's leading axes, no batch axes)
  becomes [prod(...), prod(K)] @ [prod(K), prod(F)]. The result is the same, but XLA:CPU then
  emits plain GEMMs forwards and backwards (the weight gradient is x^T dy) instead of
  dot_generals over 3-D and 4-D operands with layout copies around them (benchmarks/README.md).
  Anything else goes to `lax.dot_general` unchanged.
  """
  (lc, rc), (lb, rb) = dimension_numbers
  k = len(lc)
  if (lb or rb or tuple(lc) != tuple(range(lhs.ndim - k, lhs.ndim))
      or tuple(rc) != tuple(range(k))):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  contract = math.prod(rhs.shape[:k])
  out = jnp.matmul(lhs.reshape(-1, contract), rhs.reshape(contract, -1), precision=precision,
                   preferred_element_type=preferred_element_type)
  return out.reshape(*lhs.shape[:lhs.ndim - k], *rhs.shape[k:])


def tied_logits(x: Array, table: Array, fused: bool = False, out_dtype: Any = jnp.float32
                ) -> Array:
  """Logits against a tied embedding table: x [..., D] @ table[V, D]^T -> [..., V] out_dtype.

  Computed in x's dtype with float32 accumulation. `fused=True` runs the same product with its
  backward pass written out as 2-D GEMMs: d_x = d_logits @ table and d_table = (x^T @
  d_logits)^T. Autodiff forms d_table = d_logits^T @ x, for which XLA:CPU first writes the
  [V, B*T] transpose of d_logits, the largest array of the step; the written-out pass transposes
  only the small x and the [D, V] result. Same numbers either way (tests/test_losses.py);
  benchmarks/README.md has what it saves where.
  """
  table = table.astype(x.dtype)
  if fused:
    return _tied_logits_fused(x, table).astype(out_dtype)
  return jnp.einsum("...D,VD->...V", x, table, preferred_element_type=out_dtype)


@jax.custom_vjp
def _tied_logits_fused(x: Array, table: Array) -> Array:
  logits = jnp.matmul(x.reshape(-1, x.shape[-1]), table.T,
                      preferred_element_type=jnp.float32)  # [B*T, V]
  return logits.reshape(*x.shape[:-1], table.shape[0])


def _tied_logits_fwd(x, table):
  return _tied_logits_fused(x, table), (x, table)


def _tied_logits_bwd(residuals, d_logits):
  x, table = residuals
  x2 = x.reshape(-1, x.shape[-1])  # [B*T, D]
  d2 = d_logits.reshape(-1, table.shape[0]).astype(x.dtype)  # [B*T, V]
  d_x = jnp.matmul(d2, table, preferred_element_type=jnp.float32)  # [B*T, D]
  d_table = jnp.matmul(x2.T, d2, preferred_element_type=jnp.float32).T  # [V, D]
  return d_x.astype(x.dtype).reshape(x.shape), d_table.astype(table.dtype)


_tied_logits_fused.defvjp(_tied_logits_fwd, _tied_logits_bwd)


def dense(features, axes: tuple[str | None, ...], *, axis=-1, use_bias: bool, dtype: Dtype,
          param_dtype: Dtype, name: str, kernel_init=default_kernel_init) -> nn.DenseGeneral:
  """A `DenseGeneral` whose kernel (and bias) carry logical axis names.

  Args:
    features: output features, an int or a tuple (e.g. (N, H) for a head projection).
    axes: logical names of every kernel dimension, inputs first (e.g. (EMBED, HEADS, KV)).
    axis: input axes contracted (e.g. (-2, -1) for the [N, H] -> D output projection).
    use_bias: whether to add a bias.
    dtype: compute dtype; param_dtype: storage dtype.
    name: parameter scope name.
    kernel_init: initializer of the (flattened 2-D) kernel.
  """
  n_out = len(features) if isinstance(features, tuple) else 1
  return nn.DenseGeneral(
      features=features,
      axis=axis,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-n_out:]),
      dot_general=matmul_dot_general,
      name=name,
  )


class Kernel(nn.Module):
  """A projection's weight alone, created exactly as `dense` creates its kernel (parameter
  `<name>/kernel`, the initializer applied to the flattened [prod(inputs), prod(outputs)]
  matrix, logical axis names), for a caller that multiplies it itself (attention stacks the
  query, key and value weights into one product). Returns it in `dtype`.

  Attributes:
    shape: the kernel's shape, input dimensions first ((D, N, H) for a head projection).
    num_inputs: how many leading dimensions are inputs.
    axes: logical names of every dimension.
    dtype: compute dtype; param_dtype: storage dtype.
  """

  shape: tuple[int, ...]
  num_inputs: int
  axes: tuple[str, ...]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self) -> Array:
    def init(rng, shape, dtype):
      flat = (math.prod(shape[:self.num_inputs]), math.prod(shape[self.num_inputs:]))
      return default_kernel_init(rng, flat, dtype).reshape(shape)

    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), self.shape,
                        self.param_dtype)
    return jnp.asarray(kernel, self.dtype)


# Recomputed in the backward pass from its (compute dtype) input: otherwise autodiff keeps three
# float32 copies of the activations per norm (x^2, x - mean, the scaled output), 12 bytes per
# element where the input takes 2 in bfloat16. Without a CSE barrier: where nothing forces the
# residuals out (an unrolled stack), XLA may still keep the forward values.
_RematLayerNorm = nn.remat(nn.LayerNorm, prevent_cse=False)


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm with logically-named scale and bias; statistics are always computed in float32;
  the backward pass recomputes them (only the input is kept)."""
  return _RematLayerNorm(
      epsilon=eps,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)),
      name=name,
  )


class Dropout(nn.Module):
  """`flax.linen.Dropout` (the same masks from the same "dropout" stream), with a backward pass
  that keeps only the boolean mask (autodiff of the select also keeps a broadcast zero array).

  Attributes:
    rate: probability of dropping an element.
  """

  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, x.shape)
    return _masked(x, keep, keep_prob)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _masked(x: Array, keep: Array, keep_prob: float) -> Array:
  return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


def _masked_fwd(x, keep, keep_prob):
  return _masked(x, keep, keep_prob), keep


def _masked_bwd(keep_prob, keep, g):
  return jnp.where(keep, g / keep_prob, jnp.zeros_like(g)), None


_masked.defvjp(_masked_fwd, _masked_bwd)


FFN_PRE = "ffn_pre_activation"  # The feed-forward's [B*T, F] pre-activations, by name.


class FeedForward(nn.Module):
  """Position-wise feed-forward block: FFN(x) = act(x W1 + b1) W2 + b2 (paper eq. 2).

  Attributes:
    d_ff: hidden width F.
    activation: a key of ACTIVATIONS ("relu" as in the paper, "gelu", "swiglu", "geglu").
    dropout_rate: dropout on the hidden activations (0 in the paper; tensor2tensor's relu_dropout).
    dtype: compute dtype; param_dtype: parameter dtype.
  """

  d_ff: int
  activation: str = "relu"
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"Unknown activation {self.activation!r}; valid: {sorted(ACTIVATIONS)}.")
    act, gated = ACTIVATIONS[self.activation]
    *lead, d_model = x.shape
    kw = dict(use_bias=not gated, dtype=self.dtype, param_dtype=self.param_dtype)
    # On [B*T, D] rows: the hidden layer is then one array for both the activation's backward
    # pass and W2's gradient, not two (an array and its reshape) kept side by side.
    x = x.reshape(-1, d_model)  # [B*T, D]

    def pre(name: str) -> Array:  # Named for model.remat="ffn_act", which saves them alone.
      return checkpoint_name(dense(self.d_ff, (EMBED, MLP), name=name, **kw)(x), FFN_PRE)

    h = act(pre("wi"))  # [B*T, F]
    if gated:
      h = h * pre("wi_up")  # [B*T, F]
    # Masks drawn as [B, T, F], as always. The guard is not Dropout's own check twice: without
    # it the reshapes around a no-op dropout leave W2's gradient a second copy of h to keep.
    if self.dropout_rate and not deterministic:
      h = Dropout(self.dropout_rate)(h.reshape(*lead, -1), deterministic).reshape(h.shape)
    return dense(d_model, (MLP, EMBED), name="wo", **kw)(h).reshape(*lead, d_model)  # [B, T, D]
