"""The label-smoothed cross-entropy (the autodiff reference and the fast path with its gradient
written out) against numpy formulas, and the two against each other."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer.training import losses


def _numpy_sums(logits, targets, weights, eps):
  """Straight from the definition: q = (1 - eps) on the target, eps / (V - 1) elsewhere;
  loss = H(q, p) - H(q); nll = -log p(target); plus argmax hits."""
  logits = logits.astype(np.float64)
  vocab = logits.shape[-1]
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                keepdims=True)) - logits.max(-1, keepdims=True)
  onehot = np.eye(vocab)[targets]
  q = onehot * (1 - eps) + (1 - onehot) * (eps / (vocab - 1))
  entropy = -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0), -1)
  loss = -np.sum(q * logp, -1) - entropy
  nll = -np.sum(onehot * logp, -1)
  softmax = np.exp(logp)
  return {"loss": np.sum(loss * weights), "nll": np.sum(nll * weights),
          "correct": np.sum((logits.argmax(-1) == targets) * weights),
          "weight": np.sum(weights)}, weights[..., None] * (softmax - q), weights[..., None] * (
              softmax - onehot)


LOSSES = {"reference": losses.cross_entropy, "fused": losses.fused_cross_entropy}


@pytest.mark.parametrize("impl", sorted(LOSSES))
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_sums_and_gradients_match_numpy(eps, impl):
  loss_fn = LOSSES[impl]
  rng = np.random.default_rng(0)
  logits = (3 * rng.standard_normal((3, 5, 11))).astype(np.float32)  # [B, T, V]
  targets = rng.integers(0, 11, (3, 5)).astype(np.int32)
  targets[0, :3] = logits[0, :3].argmax(-1)  # Some hits for `correct`.
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)  # Padding gets weight 0.
  want, d_loss, d_nll = _numpy_sums(logits, targets, weights, eps)
  got = jax.jit(lambda l: loss_fn(l, targets, weights, eps))(logits)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
  assert want["correct"] >= 3
  grad = lambda k: jax.grad(lambda l: loss_fn(l, targets, weights, eps)[k])  # noqa
  np.testing.assert_allclose(grad("loss")(logits), d_loss, atol=1e-6)
  np.testing.assert_allclose(grad("nll")(logits), d_nll, atol=1e-6)
  assert not np.any(grad("loss")(logits)[weights == 0])  # Padding gets no gradient.


def test_fused_gradient_equals_autodiff_of_the_formula():
  """Also through a bf16 cast, a scaled loss and both outputs at once (the custom VJP's inputs)."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.standard_normal((2, 4, 7)), jnp.bfloat16)
  targets = rng.integers(0, 7, (2, 4))
  weights = np.ones((2, 4), np.float32)

  def formula(l):
    logp = jax.nn.log_softmax(l.astype(jnp.float32))
    q = jax.nn.one_hot(targets, 7) * 0.9 + (1 - jax.nn.one_hot(targets, 7)) * (0.1 / 6)
    return 3.0 * jnp.sum(-q * logp) - 0.5 * jnp.sum(jnp.take_along_axis(
        logp, targets[..., None], -1))

  def ours(l):
    s = losses.fused_cross_entropy(l, targets, weights, 0.1)
    return 3.0 * (s["loss"] + s["weight"] * -(0.9 * np.log(0.9) + 0.1 * np.log(0.1 / 6))) + (
        0.5 * s["nll"])

  np.testing.assert_allclose(ours(logits), formula(logits), rtol=1e-5)
  got, want = jax.grad(ours)(logits), jax.grad(formula)(logits)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=1e-2)


def test_fused_loss_keeps_bf16_logits_as_they_are():
  """The backward pass's residual is the bf16 logits, not a float32 copy of them (which would
  double the largest buffer of a large-vocabulary step)."""
  logits = jnp.zeros((2, 4, 7), jnp.bfloat16)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(lambda l: losses.fused_cross_entropy(
        l, np.zeros((2, 4), np.int32), np.ones((2, 4), np.float32), 0.1)["loss"], logits)
  assert "bf16[2,4,7]" in out.getvalue() and "f32[2,4,7]" not in out.getvalue(), out.getvalue()


def test_bad_label_smoothing_is_refused():
  for loss_fn in LOSSES.values():
    with pytest.raises(ValueError, match="label_smoothing"):
      loss_fn(jnp.zeros((1, 1, 3)), jnp.zeros((1, 1), int), jnp.ones((1, 1)), 1.0)


def test_training_step_is_the_same_with_the_reference_loss_and_projection(small_files):
  """config.fused_loss / model.fused_output only change how gradients are computed: a train
  step (loss, gradient norm, updated parameters) equals the plain-autodiff one."""
  from conftest import small_config  # pylint: disable=import-outside-toplevel

  from xformer import train  # pylint: disable=import-outside-toplevel
  results = []
  for fused in (True, False):
    run, inputs = train.build(small_config(small_files, fused_loss=fused, **{
        "model.fused_output": fused, "model.dropout": 0.0}))
    batch = run.put_batch(next(inputs.train_iterator()[0]), local=True)
    results.append(run.p_train_step(run.init_state(jax.random.key(0)), batch,
                                    jax.random.key(1)))
  (fast_state, fast), (ref_state, ref) = results
  for k in ("train/loss", "train/nll", "train/grad_norm"):
    np.testing.assert_allclose(fast[k], ref[k], rtol=1e-5, err_msg=k)
  # Adam's first update is about lr * sign(g): summation-order noise in tiny gradients moves
  # parameters by up to lr (as in the sharded-step test), so a small absolute tolerance.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
               jax.device_get(fast_state.params), jax.device_get(ref_state.params))
