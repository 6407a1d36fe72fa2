"""Multi-head attention against a plain numpy scaled-dot-product reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer.model import masks
from xformer.model.attention import MultiHeadAttention


def numpy_mha(params, x_q, x_kv, mask, bias):
  """softmax(Q K^T / sqrt(d_k) + bias) V per head, then W_O: the paper's equations in numpy."""
  wq, wk, wv = (np.asarray(params[n]["kernel"], np.float64) for n in ("query", "key", "value"))
  wo = np.asarray(params["out"]["kernel"], np.float64)  # [N, H, D]
  out = np.zeros((x_q.shape[0], x_q.shape[1], wo.shape[-1]))
  for b in range(x_q.shape[0]):
    for n in range(wq.shape[1]):
      q, k, v = x_q[b] @ wq[:, n], x_kv[b] @ wk[:, n], x_kv[b] @ wv[:, n]  # [T, H], [S, H]
      logits = q @ k.T / np.sqrt(q.shape[-1]) + bias[b, n]
      logits = np.where(mask[b, 0], logits, -np.inf)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      out[b] += (w / w.sum(-1, keepdims=True)) @ v @ wo[n]
  return out


@pytest.mark.parametrize("collect_weights", [False, True], ids=["fused_kernel", "explicit"])
def test_matches_numpy_reference(collect_weights):
  rng = np.random.default_rng(0)
  b, t, s, d, n = 2, 5, 7, 16, 4
  x_q = rng.normal(size=(b, t, d)).astype(np.float32)
  x_kv = rng.normal(size=(b, s, d)).astype(np.float32)
  k_segments = jnp.array([[1] * 7, [1] * 4 + [0] * 3])  # Second row: 3 padded keys.
  mask = masks.Mask(jnp.ones((b, t), jnp.int32), k_segments)
  bias = rng.normal(size=(b, n, t, s)).astype(np.float32)
  mha = MultiHeadAttention(num_heads=n, head_dim=d // n)
  params = nn.unbox(mha.init(jax.random.key(0), x_q, x_kv, mask)["params"])
  mutable = ["intermediates"] if collect_weights else False
  out = mha.apply({"params": params}, x_q, x_kv, mask, bias=bias, mutable=mutable)
  if collect_weights:
    out, state = out
    weights = state["intermediates"]["attention_weights"][0]  # [B, N, T, S]
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert float(jnp.abs(weights[1, :, :, 4:]).max()) == 0.0  # Padded keys get no weight.
  dense = np.ones((b, 1, t, s), bool)
  dense[1, :, :, 4:] = False  # Independent of masks.py: the padded keys written out.
  np.testing.assert_allclose(out, numpy_mha(params, x_q, x_kv, dense, bias), atol=1e-4)


def test_fully_masked_rows_stay_finite():
  x = jnp.ones((1, 3, 8))
  mask = masks.Mask(jnp.ones((1, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32))  # No real key.
  assert not mask.dense(3, 3).any()
  mha = MultiHeadAttention(num_heads=2, head_dim=4)
  params = mha.init(jax.random.key(0), x, x, mask)
  assert np.isfinite(mha.apply(params, x, x, mask)).all()
  out, _ = mha.apply(params, x, x, mask, mutable=["intermediates"])
  assert np.isfinite(out).all()


def test_attention_dropout_only_in_training():
  x = jax.random.normal(jax.random.key(1), (2, 6, 16))
  mha = MultiHeadAttention(num_heads=4, head_dim=4, dropout_rate=0.5)
  params = mha.init(jax.random.key(0), x, x, None)
  eval_a = mha.apply(params, x, x, None)
  eval_b = mha.apply(params, x, x, None, mutable=["intermediates"])[0]
  np.testing.assert_allclose(eval_a, eval_b, atol=1e-5)  # Both kernels agree without dropout.
  train = mha.apply(params, x, x, None, deterministic=False,
                    rngs={"dropout": jax.random.key(2)})
  assert float(jnp.abs(train - eval_a).max()) > 1e-2


def test_projection_weights_are_created_as_dense_layers_created_them():
  """Attention multiplies its weights itself (fused q/k/v products); `layers.Kernel` must give
  the parameters a dense layer gave (same path, initial values and logical axes), so a seed
  trains the same model as before and old checkpoints keep their meaning."""
  from xformer.model import layers  # pylint: disable=import-outside-toplevel
  axes = (layers.EMBED, layers.HEADS, layers.KV)

  class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.dense((4, 8), axes, use_bias=False, dtype=jnp.float32,
                          param_dtype=jnp.float32, name="query")(x)

  class Weight(nn.Module):
    @nn.compact
    def __call__(self, x):
      del x
      return layers.Kernel((16, 4, 8), 1, axes, name="query")()

  old = Dense().init(jax.random.key(3), jnp.ones((2, 16)))
  new = Weight().init(jax.random.key(3), jnp.ones((2, 16)))
  np.testing.assert_array_equal(nn.unbox(old)["params"]["query"]["kernel"],
                                nn.unbox(new)["params"]["query"]["kernel"])
  assert nn.get_partition_spec(old) == nn.get_partition_spec(new)


@pytest.mark.parametrize("bias_shape", [None, (1, 4, 64, 64), (2, 4, 1, 64)],
                         ids=["no_bias", "alibi_like", "broadcast_rows"])
def test_causal_chunks_equal_the_whole_attention(bias_shape):
  """attention_chunk=16: four query chunks, each over the keys up to its end, give the outputs
  and gradients of the [T, T] attention (packed rows with padding, a bias or none); the
  first chunk's keys are only its own 16 (cutting the keys wrongly changes the result)."""
  rng = np.random.default_rng(1)
  b, t, d, n = 2, 64, 16, 4
  x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  segments = jnp.asarray([[1] * 20 + [2] * 30 + [3] * 14, [1] * 50 + [0] * 14])
  mask = masks.Mask(segments, segments, causal=True)
  bias = None if bias_shape is None else jnp.asarray(rng.normal(size=bias_shape), jnp.float32)
  whole, chunked = MultiHeadAttention(n, d // n), MultiHeadAttention(n, d // n, chunk=16)
  params = nn.unbox(whole.init(jax.random.key(0), x, x, mask)["params"])

  def loss(module, params):
    out = module.apply({"params": params}, x, x, mask, bias=bias)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

  (_, want), want_grads = jax.value_and_grad(lambda p: loss(whole, p), has_aux=True)(params)
  (_, got), got_grads = jax.value_and_grad(lambda p: loss(chunked, p), has_aux=True)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  hlo = jax.jit(lambda p: chunked.apply({"params": p}, x, x, mask, bias=bias)).lower(
      params).as_text()
  # Logits of the first chunk: [B, N, 16, 16]; of the last [B, N, 16, 64]; never [.., 64, 64].
  assert "tensor<2x4x16x16xf32>" in hlo and "tensor<2x4x16x64xf32>" in hlo
  assert "tensor<2x4x64x64xf32>" not in hlo
