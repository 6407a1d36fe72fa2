"""flash_xla's hand-written backward pass against autodiff of the plain formula."""

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer.model import flash_xla, masks
from xformer.model.attention import attention_weights


def plain(q, k, v, mask, bias):
  """softmax(q k^T / sqrt(H) + bias, masked) v, differentiated by autodiff."""
  return jnp.einsum("BNTS,BSNH->BTNH", attention_weights(q, k, mask, bias), v)


def _inputs(rng, b, t, s, n, h, dtype=jnp.float32):
  q = jnp.asarray(rng.normal(size=(b, t, n, h)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(b, s, n, h)), dtype) for _ in range(2))
  return q, k, v


def _grads(fn, q, k, v, mask, bias):
  w = jnp.cos(jnp.arange(q.shape[0] * q.shape[1] * q.shape[2] * v.shape[3])).reshape(
      q.shape[:3] + v.shape[3:])

  def loss(q, k, v, bias):
    return jnp.sum(fn(q, k, v, mask, bias).astype(jnp.float32) * w)

  return jax.grad(loss, argnums=(0, 1, 2, 3) if bias is not None else (0, 1, 2))(q, k, v, bias)


def _flash(chunk, causal):
  return lambda q, k, v, mask, bias: flash_xla.attend(q, k, v, mask, bias, chunk=chunk,
                                                      causal=causal)


@pytest.mark.parametrize("chunk", [8, 16, 32])
@pytest.mark.parametrize("bias_shape", [None, (2, 4, 32, 32), (1, 4, 32, 32), (2, 1, 1, 32)],
                         ids=["no_bias", "full", "shared_rows", "per_key"])
def test_causal_packed_rows_equal_autodiff(chunk, bias_shape):
  """Packed causal rows with padding (whole rows of masked keys): outputs and the gradients of
  q, k, v and a learned bias (summed over the dims it broadcasts) as autodiff gives them."""
  rng = np.random.default_rng(0)
  q, k, v = _inputs(rng, 2, 32, 32, 4, 8)
  segments = jnp.asarray([[1] * 10 + [2] * 15 + [3] * 7, [1] * 24 + [0] * 8])
  mask = masks.Mask(segments, segments, causal=True).dense(32, 32)  # [B, 1, T, S]
  bias = None if bias_shape is None else jnp.asarray(rng.normal(size=bias_shape), jnp.float32)
  np.testing.assert_allclose(_flash(chunk, True)(q, k, v, mask, bias),
                             plain(q, k, v, mask, bias), rtol=1e-5, atol=1e-5)
  for got, want, name in zip(_grads(_flash(chunk, True), q, k, v, mask, bias),
                             _grads(plain, q, k, v, mask, bias), "q k v bias".split()):
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_cross_attention_chunks_read_every_key():
  """Not causal, T != S (a decoder's queries over padded source keys): the same attention."""
  rng = np.random.default_rng(1)
  q, k, v = _inputs(rng, 2, 16, 24, 2, 8)
  mask = masks.Mask(jnp.ones((2, 16), jnp.int32),
                    jnp.asarray([[1] * 24, [1] * 13 + [0] * 11])).dense(16, 24)
  flash = _flash(4, False)
  np.testing.assert_allclose(flash(q, k, v, mask, None), plain(q, k, v, mask, None),
                             rtol=1e-5, atol=1e-5)
  for got, want in zip(_grads(flash, q, k, v, mask, None), _grads(plain, q, k, v, mask, None)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bfloat16_stays_close_to_float32():
  """bf16 inputs: output and gradients within bf16's rounding of the float32 attention (a
  statistic kept in bf16, or a missing rescale, is off by far more)."""
  rng = np.random.default_rng(2)
  args32 = _inputs(rng, 2, 64, 64, 2, 16)
  args16 = tuple(a.astype(jnp.bfloat16) for a in args32)
  mask = jnp.tril(jnp.ones((64, 64), bool))[None, None]
  flash = _flash(16, True)
  np.testing.assert_allclose(flash(*args16, mask, None).astype(jnp.float32),
                             plain(*args32, mask, None), atol=3e-2)
  for got, want in zip(_grads(flash, *args16, mask, None), _grads(plain, *args32, mask, None)):
    assert got.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2 * scale)


def test_the_backward_pass_keeps_no_logits():
  """What autodiff keeps for the backward pass: q, k, v, the output and two [B, N, T] row
  statistics; no float array of T * S elements (jax.nn.dot_product_attention keeps its
  probabilities, which this test would catch)."""
  b, t, n, h = 1, 64, 2, 8
  q, k, v = _inputs(np.random.default_rng(3), b, t, t, n, h)
  mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(
        lambda q, k, v: jnp.sum(flash_xla.attend(q, k, v, mask, None, chunk=16, causal=True)),
        q, k, v)
  assert max(_float_sizes(out.getvalue())) == b * t * n * h, out.getvalue()
  assert _float_sizes(out.getvalue()).count(b * n * t) == 2, out.getvalue()
  reference = io.StringIO()
  with contextlib.redirect_stdout(reference):
    jax.ad_checkpoint.print_saved_residuals(
        lambda q, k, v: jnp.sum(jax.nn.dot_product_attention(q, k, v, mask=mask)), q, k, v)
  assert b * n * t * t in _float_sizes(reference.getvalue())  # The check sees logits.


def _float_sizes(printed: str) -> list[int]:
  """Element counts of the float32 residuals print_saved_residuals lists (the bool mask is the
  caller's)."""
  return [int(np.prod([int(d) for d in m.group(1).split(",") if d]))
          for m in re.finditer(r"^f32\[([\d,]*)\]", printed, re.M)]


def test_causal_chunks_never_form_the_whole_logits():
  """Forward and backward compiled: chunk 16 of 64 forms [.., 16, 16] .. [.., 16, 64] logits,
  never [.., 64, 64]."""
  q, k, v = _inputs(np.random.default_rng(4), 1, 64, 64, 2, 8)
  mask = jnp.tril(jnp.ones((64, 64), bool))[None, None]
  hlo = jax.jit(jax.grad(lambda q, k, v: jnp.sum(flash_xla.attend(
      q, k, v, mask, None, chunk=16, causal=True)), argnums=(0, 1, 2))).lower(q, k, v).as_text()
  assert "tensor<1x2x16x16xf32>" in hlo and "tensor<1x2x16x64xf32>" in hlo
  assert "x64x64xf32>" not in hlo


def test_minimal_remat_recomputes_no_forward_attention():
  """model.remat="minimal" saves the output and row statistics (named residuals), so the
  backward pass has as many matmuls as without remat; dots_no_batch recomputes the forward
  attention (two matmuls per chunk more)."""
  from xformer.model import stacks  # pylint: disable=import-outside-toplevel
  q, k, v = _inputs(np.random.default_rng(5), 1, 64, 64, 2, 8)
  mask = jnp.tril(jnp.ones((64, 64), bool))[None, None]

  def f(q, k, v):
    return jnp.sum(jnp.sin(flash_xla.attend(q * 2, k, v, mask, None, chunk=16, causal=True)))

  def matmuls(fn):
    return str(jax.make_jaxpr(jax.grad(fn, argnums=(0, 1, 2)))(q, k, v)).count("dot_general")

  policies = stacks._REMAT_POLICIES  # pylint: disable=protected-access
  plain_count = matmuls(f)
  assert matmuls(jax.checkpoint(f, policy=policies["minimal"])) == plain_count
  assert matmuls(jax.checkpoint(f, policy=policies["dots_no_batch"])) == plain_count + 2 * 4


def test_attention_module_keeps_the_output_once():
  """In the attention module with attention_chunk, the output projection reads flash_xla's own
  residual (its [B, T, N, H] output): the layer keeps q, k, v, the output and its input rows,
  five arrays of B * T * D elements, not a sixth [B*T, D] copy of the output."""
  from xformer.model.attention import MultiHeadAttention  # pylint: disable=import-outside-toplevel
  b, t, d = 2, 32, 16
  x = jnp.asarray(np.random.default_rng(6).standard_normal((b, t, d)), jnp.float32)
  attn = MultiHeadAttention(num_heads=2, head_dim=8, implementation="xla", chunk=8)
  params = attn.init(jax.random.key(0), x, x, masks.Mask(causal=True))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(
        lambda p, x: jnp.sum(attn.apply(p, x, x, masks.Mask(causal=True))), params, x)
  assert _float_sizes(out.getvalue()).count(b * t * d) == 5, out.getvalue()
