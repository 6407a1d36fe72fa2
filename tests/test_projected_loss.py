"""The projected loss (output layer and loss chunk by chunk, gradient in the forward pass) against
numpy's loss of the whole logits, its gradients against the numpy formula, and what it keeps."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_losses import _numpy_sums
from xformer import errors
from xformer.training import losses, projected_loss

B, T, D, V = 2, 16, 8, 11


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.standard_normal((B, T, D)).astype(np.float32)  # [B, T, D]
  table = rng.standard_normal((V, D)).astype(np.float32)  # [V, D]
  bias = rng.standard_normal(V).astype(np.float32)  # [V]
  targets = rng.integers(0, V, (B, T)).astype(np.int32)
  weights = (rng.random((B, T)) > 0.3).astype(np.float32)  # Padding gets weight 0.
  return hidden, table, bias, targets, weights


@pytest.mark.parametrize("chunk", [4, 8, 16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_sums_and_gradients_match_numpy(chunk, with_bias, eps):
  hidden, table, bias, targets, weights = _inputs()
  bias = bias if with_bias else None
  logits = np.einsum("btd,vd->btv", hidden.astype(np.float64), table) + (
      0 if bias is None else bias)
  want, d_logits, _ = _numpy_sums(logits, targets, weights, eps)  # d_logits [B, T, V]

  def loss(h, tb, bs):
    return projected_loss.projected_cross_entropy(h, tb, bs, targets, weights, eps, chunk)

  got = jax.jit(loss)(hidden, table, bias)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
  # Scaled by a cotangent of 3: the backward pass multiplies what the forward pass computed.
  grads = jax.grad(lambda *a: 3.0 * loss(*a)["loss"], argnums=(0, 1, 2) if with_bias else (0, 1))(
      hidden, table, bias)
  np.testing.assert_allclose(grads[0], 3 * np.einsum("btv,vd->btd", d_logits, table),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grads[1], 3 * np.einsum("btv,btd->vd", d_logits, hidden),
                             rtol=1e-4, atol=1e-5)
  if with_bias:
    np.testing.assert_allclose(grads[2], 3 * d_logits.sum((0, 1)), rtol=1e-4, atol=1e-5)
  assert not np.any(grads[0][weights == 0])  # Padding positions get no gradient.


def test_metrics_carry_no_gradient():
  """Only `loss` is differentiable (documented): nll's gradient is zero, not a wrong value."""
  hidden, table, _, targets, weights = _inputs()
  g = jax.grad(lambda h: projected_loss.projected_cross_entropy(
      h, table, None, targets, weights, 0.1, 8)["nll"])(hidden)
  assert not np.any(g)


def test_bf16_inputs_and_logits():
  """bf16 states and table, logits rounded to bf16 (model.logits_dtype): gradients come back in
  the inputs' dtypes and agree with the float32 computation to bf16 precision."""
  hidden, table, _, targets, weights = _inputs(1)
  args = (targets, weights, 0.1, 8)
  f32 = jax.grad(lambda h, t: projected_loss.projected_cross_entropy(h, t, None, *args)["loss"],
                 argnums=(0, 1))(hidden, table)
  h16, t16 = jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(table, jnp.bfloat16)
  bf16 = jax.grad(lambda h, t: projected_loss.projected_cross_entropy(
      h, t, None, *args, logits_dtype=jnp.bfloat16)["loss"], argnums=(0, 1))(h16, t16)
  assert [g.dtype for g in bf16] == [jnp.bfloat16, jnp.bfloat16]
  for a, b in zip(f32, bf16):
    np.testing.assert_allclose(np.asarray(b, np.float32), a, rtol=0.1, atol=0.05)


@pytest.mark.parametrize("scale", [0.6, 2.0])
def test_bf16_error_no_larger_than_autodiffs(scale):
  """In bf16 the forward-pass gradient (sum_v e_v w_v and the normaliser from one product of the
  bf16 exponentials) is as exact as autodiff of the whole logits in bf16: both against float32
  on the same rounded inputs, at a vocabulary where rounding adds up (V=4096), flat and peaked
  logits, most targets the argmax."""
  rng = np.random.default_rng(3)
  b, t, d, v = 2, 64, 64, 4096
  hidden = jnp.asarray(rng.standard_normal((b, t, d)), jnp.bfloat16)
  table = jnp.asarray(rng.standard_normal((v, d)) * scale, jnp.bfloat16)
  logits = np.asarray(hidden, np.float32) @ np.asarray(table, np.float32).T
  targets = np.where(rng.random((b, t)) < 0.7, logits.argmax(-1),
                     rng.integers(0, v, (b, t))).astype(np.int32)
  weights = np.ones((b, t), np.float32)

  def autodiff(h, w):
    return losses.cross_entropy(jnp.einsum("btd,vd->btv", h, w, preferred_element_type=jnp.float32),
                                targets, weights, 0.1)["loss"]

  def projected(h, w):
    return projected_loss.projected_cross_entropy(h, w, None, targets, weights, 0.1, 32)["loss"]

  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  want_loss, want = jax.value_and_grad(autodiff, argnums=(0, 1))(f32(hidden), f32(table))

  def errors_of(fn):
    loss, grads = jax.value_and_grad(fn, argnums=(0, 1))(hidden, table)
    return abs(float(loss) / float(want_loss) - 1), [
        float(jnp.linalg.norm(f32(g) - w) / jnp.linalg.norm(w)) for g, w in zip(grads, want)]

  loss_err, grad_errs = errors_of(projected)
  _, autodiff_errs = errors_of(autodiff)
  assert loss_err < 1e-4
  for got, ref in zip(grad_errs, autodiff_errs):
    assert 0 < got < 1.5 * ref, (grad_errs, autodiff_errs)


def test_keeps_no_logits_for_the_backward_pass():
  """The residuals are the hidden states' gradient and the float32 weight gradient: no array
  of a chunk's or the whole batch's logits (autodiff of the same loss keeps [B, T, V])."""
  hidden, table, _, targets, weights = _inputs()
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(
        lambda h, t: projected_loss.projected_cross_entropy(
            h, t, None, targets, weights, 0.1, 4)["loss"], hidden, table)
  saved = out.getvalue()
  assert f"f32[{B},{T},{D}]" in saved and f"f32[{V},{D}]" in saved, saved
  assert f",{V}]" not in saved.replace(f"f32[{V},{D}]", ""), saved  # No [.., V] array.


def test_chunk_must_divide_the_length():
  hidden, table, _, targets, weights = _inputs()
  with pytest.raises(errors.ConfigError, match="loss_chunk=5 must divide"):
    projected_loss.projected_cross_entropy(hidden, table, None, targets, weights, 0.1, 5)


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"data": 2, "fsdp": 4}])
def test_sharded_rows_give_the_same_sums_and_gradients(mesh_shape):
  """Over a mesh the rows' shards sum their own share of the weights' gradient over the chunks
  (shard_map) and the shards' sums meet once: the same sums and gradients as on one device, not
  scaled by the device count."""
  from xformer.runtime import sharding  # pylint: disable=import-outside-toplevel
  hidden, table, bias, targets, weights = _inputs(2)
  hidden, targets, weights = (np.concatenate([a] * 4) for a in (hidden, targets, weights))  # 8 rows

  def grads(h, t, b):
    return jax.value_and_grad(lambda h, t, b: projected_loss.projected_cross_entropy(
        h, t, b, targets, weights, 0.1, 4)["loss"], argnums=(0, 1, 2))(h, t, b)

  want = jax.jit(grads)(hidden, table, bias)
  mesh = sharding.make_mesh({"fsdp": 1, "tensor": 1, **mesh_shape})
  with jax.set_mesh(mesh):
    got = jax.jit(grads)(hidden, table, bias)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
