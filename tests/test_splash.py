"""Splash attention (the Pallas TPU kernel) against XLA attention, in Pallas' interpret mode on
CPU: forward and gradients, causal and bidirectional, packed rows, fp32 and bf16; and when
model.attention_impl="auto" / "splash" may use it."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer import config_lib, errors
from xformer.model import masks, splash
from xformer.model.attention import attention_weights

T = 128  # One kernel block.


def _packed_segments(rng, rows, length):
  """Rows of 1-3 packed segments followed by padding (0)."""
  out = np.zeros((rows, length), np.int32)
  for r in range(rows):
    cuts = np.sort(rng.choice(np.arange(8, length - 8), size=3, replace=False))
    out[r, :cuts[0]], out[r, cuts[0]:cuts[1]], out[r, cuts[1]:cuts[2]] = 1, 2, 3
  return jnp.asarray(out)


def _segment_positions(seg):
  """[B, T] positions that restart at 0 in every segment (0 on padding), written out."""
  pos = np.zeros_like(seg)
  for r in range(seg.shape[0]):
    for t in range(1, seg.shape[1]):
      pos[r, t] = pos[r, t - 1] + 1 if seg[r, t] == seg[r, t - 1] else 0
  return np.where(seg > 0, pos, 0)


def test_segment_positions_restart_per_segment():
  assert _segment_positions(np.array([[1, 1, 2, 2, 2, 0, 0]])).tolist() == [[0, 1, 0, 1, 2, 0, 0]]


def _reference(q, k, v, qs, ks, causal):
  mask = masks.attention_mask(qs, ks, causal=causal)
  probs = attention_weights(q.astype(jnp.float32), k.astype(jnp.float32), mask, None)
  return jnp.einsum("BNTS,BSNH->BTNH", probs, v.astype(jnp.float32))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype,tol,t", [(jnp.float32, 2e-5, T), (jnp.bfloat16, 3e-2, T),
                                         (jnp.float32, 2e-5, 3 * T)])
def test_splash_equals_xla_attention_forward_and_gradients(causal, dtype, tol, t):
  """One block of keys (T): one backward kernel forms dq, dk and dv; three blocks: a dq kernel
  and a dkv kernel."""
  rng = np.random.default_rng(0)
  keys = jax.random.split(jax.random.key(1), 4)
  q, k, v = (jax.random.normal(key, (2, t, 2, 64), jnp.float32) for key in keys[:3])
  qs = _packed_segments(rng, 2, t)
  ks = qs if causal else _packed_segments(np.random.default_rng(0), 2, t)  # Same packing.
  real = (qs > 0)[:, :, None, None]  # Padding queries' outputs are meaningless by design.
  cot = jax.random.normal(keys[3], q.shape) * real

  def loss(fn, q, k, v):
    return jnp.sum(fn(q.astype(dtype), k.astype(dtype), v.astype(dtype)).astype(jnp.float32)
                   * cot)

  heads_first = lambda x: x.swapaxes(1, 2)  # [B, T, N, H] <-> [B, N, T, H]
  fused = lambda q, k, v: heads_first(splash.attention(heads_first(q), heads_first(k),
                                                       heads_first(v), qs, ks, causal=causal))
  ref = lambda q, k, v: _reference(q, k, v, qs, ks, causal)
  out = fused(q.astype(dtype), k.astype(dtype), v.astype(dtype)).astype(jnp.float32)
  want = ref(q.astype(dtype), k.astype(dtype), v.astype(dtype))
  np.testing.assert_allclose(out * real, want * real, atol=tol, rtol=tol)
  grad = jax.grad(lambda *a: loss(fused, *a), argnums=(0, 1, 2))
  kernels = set(re.findall(r"name=splash_mha_([a-z]+)_", str(jax.make_jaxpr(grad)(q, k, v))))
  assert kernels == ({"fwd", "dkv"} if t == T else {"fwd", "dq", "dkv"}), kernels
  got = grad(q, k, v)
  exp = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
  for name, g, e in zip("qkv", got, exp):
    np.testing.assert_allclose(g, e, atol=5 * tol, rtol=5 * tol, err_msg=name)


def test_auto_takes_splash_only_on_tpu_and_where_it_applies():
  assert splash.choose("auto", "rope", (256,), "tpu")[0] == "splash"
  assert splash.choose("auto", "rope", (256,), "cpu")[0] == "xla"
  impl, why = splash.choose("auto", "alibi", (256,), "tpu")
  assert impl == "xla" and "logit bias" in why
  impl, why = splash.choose("auto", "rope", (64, 256), "tpu")
  assert impl == "xla" and "[64]" in why
  assert splash.choose("xla", "rope", (256,), "tpu")[0] == "xla"


def test_explicit_splash_that_cannot_apply_fails_validation():
  config = config_lib.load_file("configs/lm_default.py", "posemb=alibi",
                                ["model.attention_impl=splash"])
  with pytest.raises(errors.ConfigError, match="logit bias"):
    config_lib.validate(config)
  config = config_lib.load_file("configs/lm_default.py", "posemb=rope",
                                ["model.attention_impl=splash", "data.max_target_len=100"])
  with pytest.raises(errors.ConfigError, match=r"\[100\] are not multiples of its 128"):
    config_lib.validate(config)


@pytest.mark.parametrize("posemb", ["rope", "sinusoidal", "learned", "xpos"])
def test_models_with_splash_equal_xla_sharded_over_8_devices(posemb):
  """Packed translation rows through the whole model, as training runs it: logits and gradients
  of splash (per shard: rows over data, heads over tensor) equal XLA attention's."""
  from xformer import model as model_lib  # pylint: disable=import-outside-toplevel
  from xformer.model import config as model_config
  from xformer.runtime import sharding
  mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
  rng = np.random.default_rng(3)
  seg = _packed_segments(rng, 8, T)
  pos = jnp.asarray(_segment_positions(np.asarray(seg)))  # Restarting per segment, as packed.
  tokens = jnp.where(seg > 0, jnp.asarray(rng.integers(3, 50, (8, T))), 0)
  out = {}
  # And self-attention's q, k, v from three products instead of one (model.fused_qkv).
  for impl in ("xla", "splash") + (("splash_three_products",) if posemb == "rope" else ()):
    # gelu, not relu: a hidden unit at relu's kink for one token would flip between kernels
    # that sum in another order and jump its gradient (seen on one CPU); attention is compared.
    cfg = model_config.variant("tiny", vocab_size=50, num_heads=2, posemb=posemb, dropout=0.0,
                               max_len=T, attention_impl=impl.split("_")[0], activation="gelu",
                               fused_qkv=impl == "splash")
    model = model_lib.Transformer(cfg)
    params = model_lib.init_params(model, jax.random.key(0))

    def loss(p):
      logits = model.apply({"params": p}, tokens, tokens, src_positions=pos, tgt_positions=pos,
                           src_segments=seg, tgt_segments=seg)
      return jnp.sum(jax.nn.log_softmax(logits)[..., 7] * (seg > 0))

    with jax.set_mesh(mesh):
      out[impl] = jax.jit(jax.value_and_grad(loss))(params)
  if "splash_three_products" in out:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(  # The same sums, another order.
        a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max())), out["splash_three_products"],
        out["splash"])
  np.testing.assert_allclose(out["splash"][0], out["xla"][0], rtol=1e-4)
  # Gradients sum thousands of terms in another order (blockwise online softmax): elements
  # near zero in an array of scale ~50 differ by ~1e-3 of the scale; a wrong mask or segment
  # would move them by the scale itself.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=2e-3, atol=2e-3 * float(np.abs(b).max())), out["splash"][1], out["xla"][1])


def test_minimal_remat_keeps_the_kernels_residuals():
  """Under model.remat="minimal" the kernel's output and log-sum-exp are saved by name, so the
  backward pass runs only the backward kernels (dots_no_batch saves neither and runs the
  forward kernel again)."""
  import io, contextlib  # pylint: disable=import-outside-toplevel,multiple-imports
  from xformer.model import stacks  # pylint: disable=import-outside-toplevel
  q, k, v = (jax.random.normal(key, (1, 2, T, 64)) for key in jax.random.split(jax.random.key(0), 3))
  seg = jnp.ones((1, T), jnp.int32)
  f = lambda q, k, v: jnp.sum(jnp.sin(splash.attention(q * 2, k, v, seg, seg, causal=True)))

  def saved(policy):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      jax.ad_checkpoint.print_saved_residuals(jax.checkpoint(f, policy=policy), q, k, v)
    # The kernel's log-sum-exp, [B, N, T] (its output has q's shape, as q has).
    return out.getvalue().count(f"f32[1,2,{T}] output of")

  policies = stacks._REMAT_POLICIES  # pylint: disable=protected-access
  assert saved(policies["minimal"]) == 1 and saved(policies["dots_no_batch"]) == 0
