"""Model properties for every registered positional encoding and both model types.

Causality (the future never leaks), padding (padded source tokens are invisible), cached decoding
(one token at a time with the KV cache equals the full forward pass), packing (a packed row equals
its examples run alone), and the paper's parameter counts.
"""

import contextlib
import dataclasses
import io
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer import model as model_lib
from xformer import positional, tasks
from xformer.model import config as model_config
from xformer.model import layers, masks

ENCODINGS = ["none", "sinusoidal", "learned", "rope", "alibi", "t5_bias", "xpos", "fire",
             "kerple_log"]
assert set(ENCODINGS) <= set(positional.names())


def _cfg(posemb, **kw):
  return model_config.variant("tiny", vocab_size=32, d_model=32, num_heads=4, d_ff=64,
                          num_encoder_layers=2, num_decoder_layers=2, posemb=posemb, max_len=16,
                          **kw)


def _tokens(key, shape):
  return jax.random.randint(jax.random.key(key), shape, 3, 32)


def _pack(rows):
  """Packs [(tokens, ...)] into one row: tokens, segment ids (1, 2, ...), restarting positions."""
  tokens = jnp.concatenate(rows)[None]
  segments = jnp.concatenate([jnp.full(len(r), i + 1) for i, r in enumerate(rows)])[None]
  positions = jnp.concatenate([jnp.arange(len(r)) for r in rows])[None]
  return tokens, segments, positions


@pytest.mark.parametrize("posemb", ENCODINGS)
def test_translation_model_properties(posemb):
  model = model_lib.Transformer(_cfg(posemb))
  params = model_lib.init_params(model, jax.random.key(0))
  apply = jax.jit(model.apply)
  src = _tokens(1, (2, 7)).at[1, 4:].set(0)  # Row 1: 4 real tokens, 3 padding.
  tgt = _tokens(2, (2, 6))
  logits = apply({"params": params}, src, tgt)  # [B, T, V]
  assert logits.shape == (2, 6, 32) and logits.dtype == jnp.float32

  # Causality: changing target tokens 3.. leaves logits 0..2 untouched.
  changed = apply({"params": params}, src, tgt.at[:, 3:].set(_tokens(3, (2, 3))))
  np.testing.assert_allclose(changed[:, :3], logits[:, :3], atol=1e-6)
  assert float(jnp.abs(changed[:, 3:] - logits[:, 3:]).max()) > 1e-3  # ...but later ones move.

  # Padding: whatever sits in padded source slots (segment 0) changes nothing.
  segments = (src != 0).astype(jnp.int32)
  noisy = apply({"params": params}, src.at[1, 4:].set(_tokens(4, (3,))), tgt,
                src_segments=segments)
  np.testing.assert_allclose(noisy, logits, atol=1e-6)

  # Cached decoding, one token at a time, equals the full forward pass.
  encoded = jax.jit(lambda p, s: model.apply({"params": p}, s, method="encode"))(params, src)

  @jax.jit
  def step(cache, token):
    out, state = model.apply({"params": params, "cache": cache}, encoded, segments, token,
                             decode=True, method="decode", mutable=["cache"])
    return out, state["cache"]

  cache = model_lib.init_cache(model, batch_size=2, max_len=6)
  for t in range(6):
    out, cache = step(cache, tgt[:, t:t + 1])
    np.testing.assert_allclose(out[:, 0], logits[:, t], atol=1e-5, err_msg=f"step {t}")

  # Packing: two examples in one row give the logits they give alone. Shapes match the batch
  # above ([2, 7] and [2, 6]) so that nothing recompiles.
  pairs = [(_tokens(5, (3,)), _tokens(6, (4,))), (_tokens(7, (4,)), _tokens(8, (2,)))]
  p_src, p_src_seg, p_src_pos = _pack([s for s, _ in pairs])
  p_tgt, p_tgt_seg, p_tgt_pos = _pack([t for _, t in pairs])
  two = lambda x: jnp.concatenate([x, x])  # [1, L] -> [2, L]
  packed = apply({"params": params}, two(p_src), two(p_tgt), src_positions=two(p_src_pos),
                 tgt_positions=two(p_tgt_pos), src_segments=two(p_src_seg),
                 tgt_segments=two(p_tgt_seg))
  alone_src = jnp.stack([jnp.pad(s, (0, 7 - len(s))) for s, _ in pairs])  # [2, 7], 0-padded
  alone_tgt = jnp.stack([jnp.pad(t, (0, 6 - len(t))) for _, t in pairs])  # [2, 6]
  alone = apply({"params": params}, alone_src, alone_tgt)
  np.testing.assert_allclose(packed[0, :4], alone[0, :4], atol=1e-5)
  np.testing.assert_allclose(packed[0, 4:], alone[1, :2], atol=1e-5)


@pytest.mark.parametrize("posemb", ENCODINGS)
def test_decoder_only_lm_properties(posemb):
  model = model_lib.DecoderOnlyLM(_cfg(posemb))
  params = model_lib.init_params(model, jax.random.key(0))
  apply = jax.jit(model.apply)
  tokens = _tokens(1, (2, 8))
  logits = apply({"params": params}, tokens)

  changed = apply({"params": params}, tokens.at[:, 5:].set(_tokens(2, (2, 3))))
  np.testing.assert_allclose(changed[:, :5], logits[:, :5], atol=1e-6)
  assert float(jnp.abs(changed[:, 5:] - logits[:, 5:]).max()) > 1e-3

  @jax.jit
  def step(cache, chunk):
    out, state = model.apply({"params": params, "cache": cache}, chunk, decode=True,
                             mutable=["cache"])
    return out, state["cache"]

  # A 3-token prompt in one call (prefill), then one token at a time.
  cache = model_lib.init_cache(model, batch_size=2, max_len=8)
  out, cache = step(cache, tokens[:, :3])
  np.testing.assert_allclose(out, logits[:, :3], atol=1e-5)
  for t in range(3, 8):
    out, cache = step(cache, tokens[:, t:t + 1])
    np.testing.assert_allclose(out[:, 0], logits[:, t], atol=1e-5, err_msg=f"step {t}")

  rows = [_tokens(3, (5,)), _tokens(4, (3,))]
  p_tok, p_seg, p_pos = _pack(rows)  # [1, 8]
  packed = apply({"params": params}, jnp.concatenate([p_tok, p_tok]),
                 positions=jnp.concatenate([p_pos, p_pos]),
                 segments=jnp.concatenate([p_seg, p_seg]))
  alone = apply({"params": params}, jnp.stack([jnp.pad(r, (0, 8 - len(r))) for r in rows]))
  np.testing.assert_allclose(packed[0, :5], alone[0, :5], atol=1e-5)
  np.testing.assert_allclose(packed[0, 5:], alone[1, :3], atol=1e-5)


def _num_params(cfg):
  model = model_lib.Transformer(cfg)
  shapes = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def _closed_form(d, ff, layers, vocab):
  """Parameters of the paper's model written out: attention q/k/v/out kernels (no biases), the
  FFN's two kernels and biases, a LayerNorm's scale and bias per residual; one shared
  embedding, which is also the output projection."""
  attention, ffn, norm = 4 * d * d, 2 * d * ff + ff + d, 2 * d
  encoder = layers * (attention + ffn + 2 * norm)
  decoder = layers * (2 * attention + ffn + 3 * norm)
  return encoder + decoder + vocab * d


@pytest.mark.parametrize("name, d, ff, paper", [("base", 512, 2048, 65e6),
                                                ("big", 1024, 4096, 213e6)])
def test_parameter_counts_are_the_closed_form_and_the_papers(name, d, ff, paper):
  count = _num_params(model_config.variant(name, vocab_size=37_000))
  assert count == _closed_form(d, ff, 6, 37_000), f"{name}: {count:,}"
  if name == "base":
    assert count == 63_045_632
  assert abs(count - paper) / paper < 0.05, f"{name}: {count:,} parameters vs {paper:,.0f}"


@pytest.mark.parametrize("change", [dict(norm="pre"), dict(activation="swiglu"),
                                    dict(share_embeddings=False, tie_output=False)])
def test_options_build_and_run(change):
  model = model_lib.Transformer(_cfg("sinusoidal", **change))
  params = model_lib.init_params(model, jax.random.key(0))
  logits = jax.jit(model.apply)({"params": params}, _tokens(1, (2, 5)), _tokens(2, (2, 4)))
  assert logits.shape == (2, 4, 32) and np.isfinite(logits).all()
  if "share_embeddings" in change:
    assert params["src_embed"]["embedding"].shape == (32, 32)
    assert params["decoder"]["logits"]["kernel"].shape == (32, 32)
  if change.get("norm") == "pre":
    assert "final_norm" in params["encoder"] and "final_norm" in params["decoder"]


REMAT_CASES = {
    "post": (("none", 1), ("full", 1), ("dots", 1), ("minimal", 1), ("ffn", 1), ("ffn_act", 1),
             ("none", 2), ("none", 3)),
    # Pre-LN: the ffn policies rematerialise the block's LayerNorm too.
    "pre": (("none", 1), ("ffn", 1), ("ffn_act", 1)),
}


@pytest.mark.slow
@pytest.mark.parametrize("norm", sorted(REMAT_CASES))
def test_remat_and_unroll_change_speed_not_math(norm):
  """Remat policies and scan_unroll (partial: 2 of 3 layers per trip; full: 3) give the same
  loss and gradients, dropout included, from the same stacked parameters; and the same cached
  decoding."""
  src, tgt = _tokens(1, (2, 5)), _tokens(2, (2, 4))
  results, decoded = [], []
  for remat, unroll in REMAT_CASES[norm]:
    model = model_lib.Transformer(dataclasses.replace(  # gelu: ffn_act recomputes it.
        _cfg("rope", remat=remat, scan_unroll=unroll, activation="gelu", norm=norm),
        num_encoder_layers=3, num_decoder_layers=3))
    params = model_lib.init_params(model, jax.random.key(0))

    def loss(p):
      out = model.apply({"params": p}, src, tgt, deterministic=False,
                        rngs={"dropout": jax.random.key(3)})
      return jnp.mean(out**2)

    results.append(jax.jit(jax.value_and_grad(loss))(params))

    @jax.jit
    def decode_two(p):  # Encode, then two cached decoder steps (jitted: eager scans are slow).
      encoded = model.apply({"params": p}, src, method="encode")
      cache = model_lib.init_cache(model, batch_size=2, max_len=4)
      segments = (src > 0).astype(jnp.int32)
      for t in range(2):
        out, state = model.apply({"params": p, "cache": cache}, encoded, segments,
                                 tgt[:, t:t + 1], decode=True, method="decode",
                                 mutable=["cache"])
        cache = state["cache"]
      return out

    decoded.append(decode_two(params))
  for other, dec in zip(results[1:], decoded[1:]):
    np.testing.assert_allclose(other[0], results[0][0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), other[1],
                 results[0][1])
    np.testing.assert_allclose(dec, decoded[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("posemb", ENCODINGS)
def test_bf16_compute_stays_close_to_fp32(posemb):
  """bf16 compute with fp32 params, softmax, bias and logits: logits (std ~1 here) within 0.06
  of the fp32 model's, 0.01 on average (measured: 0.026-0.032 max, 0.005 mean), over 40 source
  and 30 target positions (ALiBi's and T5's biases grow with distance)."""
  cfg = _cfg(posemb).replace(max_len=64)
  fp32, bf16 = model_lib.Transformer(cfg), model_lib.Transformer(cfg.replace(dtype="bfloat16"))
  params = model_lib.init_params(bf16, jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  src, tgt = _tokens(1, (4, 40)), _tokens(2, (4, 30))
  want = np.asarray(jax.jit(fp32.apply)({"params": params}, src, tgt))
  got = jax.jit(bf16.apply)({"params": params}, src, tgt)
  assert got.dtype == jnp.float32
  diff = np.abs(np.asarray(got) - want)
  assert diff.max() < 0.06 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_bad_model_config_fails_before_compiling():
  with pytest.raises(ValueError, match="not divisible by model.num_heads"):
    model_config.variant("tiny", d_model=30)
  with pytest.raises(ValueError, match="choose one of"):
    model_config.variant("tiny", norm="middle")
  with pytest.raises(ValueError, match="scan_unroll must be an int >= 1"):
    model_config.variant("tiny", scan_unroll=0)
  with pytest.raises(ValueError, match="needs the layer loop"):
    model_config.variant("tiny", scan_unroll=2, remat="full")
  with pytest.raises(ValueError, match="model.variant='huge' is not valid; choose one of "
                                       r"\['tiny', 'mini', 'small', 'base', 'big'"):
    model_config.variant("huge")


@pytest.mark.parametrize("kind", ["translation", "lm"])
def test_length_based_attention_equals_dense_masks(kind):
  """attention_impl="xla_lengths" gives the kernel what cuDNN gets (causal flag, row lengths,
  no mask); on unpacked padded rows it must equal the dense-mask model, weights path too."""
  cfg = model_config.variant("tiny", vocab_size=50, d_model=32, num_heads=4, d_ff=64,
                         num_encoder_layers=2, num_decoder_layers=2, posemb="alibi",
                         dropout=0.0)
  dense = tasks.get(kind).build_model(cfg)
  fused = tasks.get(kind).build_model(dataclasses.replace(cfg, attention_impl="xla_lengths"))
  params = model_lib.init_params(dense, jax.random.key(0))
  src = np.array([[5, 6, 7, 8, 1, 0, 0], [9, 10, 1, 0, 0, 0, 0]], np.int32)
  tgt = np.array([[2, 11, 12, 13, 0, 0], [2, 14, 0, 0, 0, 0]], np.int32)
  seg_src, seg_tgt = (src > 0).astype(np.int32), (tgt > 0).astype(np.int32)
  if kind == "translation":
    args, kw = (src, tgt), dict(src_segments=seg_src, tgt_segments=seg_tgt)
  else:
    args, kw = (tgt,), dict(segments=seg_tgt)
  want = jax.jit(lambda p: dense.apply({"params": p}, *args, **kw))(params)
  got = jax.jit(lambda p: fused.apply({"params": p}, *args, **kw))(params)
  explicit, _ = jax.jit(lambda p: fused.apply({"params": p}, *args, mutable=("intermediates",),
                                              **kw))(params)
  real = seg_tgt[..., None] > 0
  np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=1e-5)
  np.testing.assert_allclose(np.where(real, explicit, 0), np.where(real, want, 0), atol=1e-5)
  assert np.all(np.isfinite(got))


@pytest.mark.parametrize("lhs,rhs,dims", [
    ((2, 3, 8), (8, 4, 5), (((2,), (0,)), ((), ()))),  # [B, T, D] x [D, N, H]: q/k/v.
    ((2, 3, 4, 5), (4, 5, 8), (((2, 3), (0, 1)), ((), ()))),  # [B, T, N, H] x [N, H, D]: out.
    ((2, 3, 8), (8, 16), (((2,), (0,)), ((), ()))),  # Feed-forward.
    ((2, 3, 8), (2, 8, 4), (((2,), (1,)), ((0,), (0,)))),  # Batched: left to lax.
    ((3, 8, 2), (8, 4), (((1,), (0,)), ((), ()))),  # Not the trailing axes: left to lax.
])
def test_dense_matmul_equals_dot_general(lhs, rhs, dims):
  a = np.random.default_rng(0).standard_normal(lhs).astype(np.float32)
  b = np.random.default_rng(1).standard_normal(rhs).astype(np.float32)
  want = jax.lax.dot_general(a, b, dims)
  got = layers.matmul_dot_general(a, b, dims)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # And it is what the dense layers use.
  dense = layers.dense((4, 5), (None, None, None), use_bias=False, dtype=jnp.float32,
                       param_dtype=jnp.float32, name="q")
  assert dense.dot_general is layers.matmul_dot_general


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tied_logits_and_gradients_equal_the_einsum(dtype):
  """layers.tied_logits with its written-out backward pass (fused=True) against autodiff of the
  plain einsum."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 3, 8)), dtype)  # [B, T, D]
  table = jnp.asarray(rng.standard_normal((11, 8)), jnp.float32)  # [V, D], fp32 params
  cot = jnp.asarray(rng.standard_normal((2, 3, 11)), jnp.float32)  # d loss / d logits

  def einsum(x, t):
    return jnp.einsum("BTD,VD->BTV", x, t.astype(dtype), preferred_element_type=jnp.float32)

  got, got_vjp = jax.vjp(lambda x, t: layers.tied_logits(x, t, fused=True), x, table)
  want, want_vjp = jax.vjp(einsum, x, table)
  assert got.dtype == jnp.float32 and got.shape == (2, 3, 11)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  tol = 1e-5 if dtype == jnp.float32 else 5e-2
  for g, w, like in zip(got_vjp(cot), want_vjp(cot), (x, table)):
    assert g.dtype == like.dtype and g.shape == like.shape
    np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("fused", [True, False])
def test_bfloat16_logits_stay_close_and_the_loss_is_float32(fused):
  """model.logits_dtype=bfloat16: logits rounded to bf16 (relative error <= 2^-8 of each), the
  loss computed from them in float32 within 1e-2 of the float32-logits loss."""
  from xformer.training import losses  # pylint: disable=import-outside-toplevel
  cfg = _cfg("rope").replace(fused_output=fused)
  f32, b16 = model_lib.Transformer(cfg), model_lib.Transformer(cfg.replace(logits_dtype="bfloat16"))
  params = model_lib.init_params(f32, jax.random.key(0))
  src, tgt = _tokens(1, (4, 9)), _tokens(2, (4, 7))
  want = f32.apply({"params": params}, src, tgt)
  got = b16.apply({"params": params}, src, tgt)
  assert got.dtype == jnp.bfloat16 and want.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2**-8, atol=1e-6)
  weights = jnp.ones(tgt.shape)
  for loss in (losses.cross_entropy, losses.fused_cross_entropy):
    a, b = loss(want, tgt, weights, 0.1), loss(got, tgt, weights, 0.1)
    assert b["loss"].dtype == jnp.float32
    np.testing.assert_allclose(b["loss"] / b["weight"], a["loss"] / a["weight"], rtol=1e-2)


def test_a_layer_keeps_only_lean_residuals_for_its_backward_pass():
  """What a training step keeps per layer (under a layer loop each residual is a stacked buffer
  of its own): in bfloat16 compute no float32 copy of the activations (LayerNorm recomputes its
  statistics), dropout keeps a boolean mask and no zero array, and the FFN keeps its hidden
  layer once (relu is differentiated from its output, which W2's gradient needs anyway)."""
  b, t, d, f = 2, 24, 64, 96  # (No weight or attention array has b*t*d or b*t*f elements.)
  cfg = model_config.variant("tiny", vocab_size=50, d_model=d, d_ff=f, num_heads=2, dtype="bfloat16",
                         dropout=0.1)
  layer = model_lib.EncoderLayer(cfg, None, deterministic=False)
  x = jnp.ones((b, t, d), jnp.bfloat16)
  ctx = model_lib.Context(masks.Mask(jnp.ones((b, t), jnp.int32), jnp.ones((b, t), jnp.int32)))
  params = layer.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, ctx)

  def loss(p, x):
    y, _ = layer.apply(p, x, ctx, rngs={"dropout": jax.random.key(2)})
    return jnp.sum(y.astype(jnp.float32))

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(loss, params, x)  # "bf16[2,16,64] output of ..."
  kept = [(m.group(1), int(np.prod([int(n) for n in m.group(2).split(",") if n])))
          for m in re.finditer(r"^(\w+)\[([\d,]*)\]", out.getvalue(), re.M)]
  activations = [dtype for dtype, n in kept if n == b * t * d]
  assert "f32" not in activations, out.getvalue()
  assert activations.count("bool") == 2, out.getvalue()  # One per dropout (two sublayers).
  assert [n for _, n in kept].count(b * t * f) == 1, out.getvalue()  # The FFN hidden layer.
  # A select's other branch (zeros) kept as a residual: an activation-sized constant.
  assert not re.search(rf"^\w+\[2,{t},(64|96)\] output of (broadcast_in_dim|jitted function "
                       "'_where')", out.getvalue(), re.M), out.getvalue()


def test_remat_ffn_keeps_no_hidden_layer():
  """model.remat="ffn": a layer keeps nothing of the feed-forward's width F (its hidden layer is
  recomputed from the block's input; without remat it keeps two such arrays, the gelu's input
  and output); "ffn_act" keeps the pre-activation alone, and recomputes no matmul (only the
  gelu: no dot_general is repeated in the backward pass)."""
  b, t, d, f = 2, 24, 64, 96
  x = jnp.ones((b, t, d), jnp.bfloat16)
  ctx = model_lib.Context(masks.Mask(jnp.ones((b, t), jnp.int32), jnp.ones((b, t), jnp.int32)))
  counts, dots = [], []
  for remat in ("none", "ffn", "ffn_act"):
    cfg = model_config.variant("tiny", vocab_size=50, d_model=d, d_ff=f, num_heads=2,
                               dtype="bfloat16", activation="gelu", remat=remat)
    layer = model_lib.EncoderLayer(cfg, None)
    params = layer.init(jax.random.key(0), x, ctx)
    loss = lambda p, x: jnp.sum(layer.apply(p, x, ctx)[0].astype(jnp.float32))  # noqa: E731
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      jax.ad_checkpoint.print_saved_residuals(loss, params, x)  # pylint: disable=cell-var-from-loop
    counts.append(len(re.findall(rf"^bf16\[{b * t},{f}\]", out.getvalue(), re.M)))
    dots.append(str(jax.make_jaxpr(jax.grad(loss))(params, x)).count("dot_general"))
  assert counts == [2, 0, 1], counts
  assert dots[1] == dots[0] + 1 and dots[2] == dots[0], dots  # ffn repeats W1's product.


@pytest.mark.parametrize("remat,fewer", [("ffn", 1), ("ffn_act", 0)])
def test_pre_ln_remat_ffn_keeps_no_norm_output(remat, fewer):
  """Pre-LN under remat="ffn": the feed-forward's LayerNorm is rematerialised with it, so a
  layer keeps one [B*T, D]-sized array fewer than without remat (the norm's output, which is
  the block's input); "ffn_act" keeps it. The parameters are where they were."""
  b, t, d, f = 2, 24, 64, 96
  x = jnp.ones((b, t, d), jnp.bfloat16)
  ctx = model_lib.Context(masks.Mask(jnp.ones((b, t), jnp.int32), jnp.ones((b, t), jnp.int32)))
  kept, trees = [], []
  for policy in ("none", remat):
    cfg = model_config.variant("tiny", vocab_size=50, d_model=d, d_ff=f, num_heads=2,
                               dtype="bfloat16", activation="gelu", norm="pre", remat=policy)
    layer = model_lib.EncoderLayer(cfg, None)
    params = layer.init(jax.random.key(0), x, ctx)
    trees.append(jax.tree.map(jnp.shape, params))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      jax.ad_checkpoint.print_saved_residuals(  # pylint: disable=cell-var-from-loop
          lambda p, x: jnp.sum(layer.apply(p, x, ctx)[0].astype(jnp.float32)), params, x)
    kept.append(len(re.findall(rf"^bf16\[({b},{t}|{b * t}),{d}\]", out.getvalue(), re.M)))
  assert trees[0] == trees[1]
  assert kept[1] == kept[0] - fewer, kept


def _np_layer_norm(x, p, eps):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def test_a_pre_norm_swiglu_encoder_layer_equals_numpy():
  """x + Attn(LN(x)), then + SwiGLU(LN(.)) with SwiGLU(y) = (silu(y W) * (y V)) W_o (Shazeer
  2020; no biases), every weight read from the layer's parameters, computed in float64."""
  from test_attention import numpy_mha  # pylint: disable=import-outside-toplevel
  cfg = model_config.variant("tiny", vocab_size=50, d_model=16, num_heads=2, d_ff=24,
                             norm="pre", activation="swiglu", dropout=0.0)
  layer = model_lib.EncoderLayer(cfg, None, deterministic=True)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 16)).astype(np.float32)
  ctx = model_lib.Context(masks.Mask(jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32)))
  params = nn.unbox(layer.init(jax.random.key(0), jnp.asarray(x), ctx))["params"]
  params = jax.tree.map(  # LayerNorm's scale 1 and bias 0 at init would hide a swap.
      lambda p: p + rng.normal(size=p.shape).astype(np.float32) * 0.1, params)
  got, _ = layer.apply({"params": params}, jnp.asarray(x), ctx)
  eps, x64 = cfg.layer_norm_eps, x.astype(np.float64)
  y = _np_layer_norm(x64, params["norm_attention"], eps)
  h = x64 + numpy_mha(params["self_attention"], y, y, np.ones((2, 1, 5, 5), bool),
                      np.zeros((2, 2, 5, 5)))
  y = _np_layer_norm(h, params["norm_ffn"], eps)
  w, v, wo = (np.asarray(params["ffn"][n]["kernel"], np.float64) for n in ("wi", "wi_up", "wo"))
  gate = y @ w
  want = h + (gate / (1 + np.exp(-gate)) * (y @ v)) @ wo
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
