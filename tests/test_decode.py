"""Decoding: beam 1 equals greedy; a beam as large as the search space finds the exhaustive
best; cached greedy equals re-running the full model each step."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from xformer import model as model_lib
from xformer.data.tokenizer import BOS_ID, EOS_ID
from xformer.model import config as model_config
from xformer.model import decode


def _model(vocab, posemb="rope", seed=0, sharpen=3.0):
  cfg = model_config.variant("tiny", vocab_size=vocab, d_model=32, num_heads=2, d_ff=64,
                         num_encoder_layers=1, num_decoder_layers=2, posemb=posemb, dropout=0.0)
  model = model_lib.Transformer(cfg)
  params = model_lib.init_params(model, jax.random.key(seed))
  # Sharpen the random model so that greedy and beam choices are far from ties.
  params = jax.tree.map(lambda x: x * sharpen if x.ndim >= 2 else x, params)
  return model, params


def _sequence_logps(model, params, src, seqs, length):
  """log P(seq | src) of each sequence by the full (uncached) model, in one batch: teacher
  forcing on BOS + seq[:-1], padded to `length` (causality makes the padding irrelevant)."""
  padded = np.zeros((len(seqs), length), np.int32)
  for i, seq in enumerate(seqs):
    padded[i, :len(seq)] = seq
  tgt_in = np.concatenate([np.full((len(seqs), 1), BOS_ID), padded[:, :-1]], axis=1)
  logits = jax.jit(model.apply)({"params": params}, jnp.repeat(src, len(seqs), 0), tgt_in)
  logp = np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits), padded[..., None], -1))[..., 0]
  return [float(logp[i, :len(seq)].sum()) for i, seq in enumerate(seqs)]


def test_beam_of_one_equals_greedy():
  model, params = _model(40)
  src = jax.random.randint(jax.random.key(1), (3, 7), 3, 40)
  greedy, logp = decode.greedy_translate(model, params, src, max_len=12)
  tokens, scores = decode.beam_translate(model, params, src, max_len=12, beam=1, alpha=0.0)
  np.testing.assert_array_equal(tokens[:, 0], greedy)
  # The greedy score is the output's log-probability, as scored by the full model (alpha 0: no
  # length penalty in the beam score either).
  np.testing.assert_allclose(logp, scores[:, 0], rtol=1e-5, atol=1e-5)
  want = [_sequence_logps(model, params, src[i:i + 1], [[t for t in np.asarray(greedy[i]) if t]],
                          12)[0] for i in range(3)]
  np.testing.assert_allclose(logp, want, rtol=1e-4, atol=1e-4)


def test_cached_greedy_equals_full_recompute():
  model, params = _model(40, posemb="alibi")
  src = jax.random.randint(jax.random.key(2), (2, 6), 3, 40)
  greedy = np.asarray(decode.greedy_translate(model, params, src, max_len=8)[0])
  np.testing.assert_array_equal(greedy, decode.recompute_translate(model, params, src, max_len=8))
  full = jax.jit(model.apply)
  for row in range(2):
    prefix = np.zeros((1, 8), np.int32)  # Causal: slots after t do not change position t.
    prefix[0, 0] = BOS_ID
    for t in range(8):  # Re-run the whole model on the whole prefix for every token.
      logits = full({"params": params}, src[row:row + 1], prefix)
      token = int(jnp.argmax(logits[0, t]))
      assert greedy[row, t] == token, (row, t)
      if token == EOS_ID or t == 7:
        break
      prefix[0, t + 1] = token


def test_cached_beam_search_equals_recompute_for_table_and_bias_encodings():
  for posemb in ("learned", "t5_bias"):
    model, params = _model(40, posemb=posemb)
    src = jax.random.randint(jax.random.key(4), (2, 6), 3, 40)
    tokens, scores = decode.beam_translate(model, params, src, max_len=9, beam=3, alpha=0.6)
    ref_tokens, ref_scores = decode.recompute_translate(model, params, src, max_len=9, beam=3)
    np.testing.assert_array_equal(tokens, ref_tokens, err_msg=posemb)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, err_msg=posemb)


def test_cross_attention_keys_and_values_are_projected_once_per_sequence():
  model, params = _model(40, posemb="sinusoidal")
  src = jax.random.randint(jax.random.key(5), (2, 6), 3, 40)
  for beam in (1, 3):
    fast = decode.translate(model, params, src, max_len=9, beam=beam)
    slow = decode.beam_translate(model, params, src, 9, beam, 0.6, cache_cross=False) if (
        beam > 1) else decode.greedy_translate(model, params, src, 9, cache_cross=False)
    np.testing.assert_array_equal(np.asarray(fast[0]).reshape(2, beam, 9),
                                  np.asarray(slow[0]).reshape(2, beam, 9))
    np.testing.assert_allclose(np.asarray(fast[1]).reshape(-1), np.asarray(slow[1]).reshape(-1),
                               rtol=1e-5, atol=1e-6)
  # The primed cache holds each layer's cross keys = encoder output x key kernel.
  encoded = model.apply({"params": params}, src, method="encode")
  cache = decode.translation_cache(model, params, encoded, max_len=9)
  layers = cache["decoder"]["layers"]["cross_attention"]
  kernel = params["decoder"]["layers"]["cross_attention"]["key"]["kernel"]  # [L, D, N, H]
  want = np.einsum("BSD,LDNH->LBSNH", np.asarray(encoded), np.asarray(kernel))
  np.testing.assert_allclose(layers["cross_key"], want, rtol=1e-4, atol=1e-5)
  # A decode step no longer multiplies the encoder output by the key / value kernels: its FLOPs
  # drop by (K and V) 2 x B x S x D x D x 2 per layer (the cost analysis counts the body of
  # the scanned layer loop once).
  step = decode.translation_step(model, params, encoded, masks_of(src))
  token = jnp.full((2, 1), BOS_ID, jnp.int32)
  cost = lambda c: jax.jit(step).lower(c, token).compile().cost_analysis()["flops"]
  unprimed = model_lib.init_cache(model, 2, 9)
  saved = cost(unprimed) - cost(cache)
  d, s_len, batch = 32, 6, 2
  assert saved >= 0.95 * 2 * batch * s_len * d * d * 2, saved


def masks_of(src):
  from xformer.model import masks  # pylint: disable=import-outside-toplevel
  return masks.segments_from_tokens(src)


def test_full_width_beam_finds_the_exhaustive_best():
  vocab, max_len, alpha = 5, 4, 0.6
  model, params = _model(vocab, seed=3)
  src = jnp.array([[3, 4, 3, 1]])
  candidates = []  # Every hypothesis: ends with EOS, or reaches max_len.
  for length in range(1, max_len + 1):
    for body in itertools.product([t for t in range(vocab) if t != EOS_ID], repeat=length - 1):
      lasts = [EOS_ID] if length < max_len else range(vocab)
      candidates += [tuple(body) + (last,) for last in lasts]
  logps = _sequence_logps(model, params, src, candidates, max_len)
  # GNMT's length penalty (Wu et al. 2016, eq. 14), written out: ((5 + |Y|) / 6)^alpha.
  scores = {seq: lp / ((5 + len(seq)) / 6) ** alpha for seq, lp in zip(candidates, logps)}
  best = max(scores, key=scores.get)
  tokens, beam_scores = decode.beam_translate(model, params, src, max_len=max_len,
                                              beam=vocab**max_len, alpha=alpha)
  got = tuple(int(t) for t in tokens[0, 0][:len(best)])
  assert got == best
  np.testing.assert_allclose(float(beam_scores[0, 0]), scores[best], rtol=1e-4)
  # The n-best list is sorted and its second entry is the exhaustive second best.
  second = sorted(scores.values())[-2]
  np.testing.assert_allclose(float(beam_scores[0, 1]), second, rtol=1e-4)


def _next_logps(model, params, src, prefixes, length):
  """log P(next token | src, prefix) [len(prefixes), V] by the full (uncached) model."""
  tgt_in = np.zeros((len(prefixes), length), np.int32)
  tgt_in[:, 0] = BOS_ID
  for i, prefix in enumerate(prefixes):
    tgt_in[i, 1:len(prefix) + 1] = prefix
  logits = jax.jit(model.apply)({"params": params}, jnp.repeat(src, len(prefixes), 0), tgt_in)
  logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
  return np.stack([logp[i, len(prefix)] for i, prefix in enumerate(prefixes)])


def _reference_beam(model, params, src, max_len, beam, alpha):
  """Beam search as the decode module documents it, in plain Python over the full model: K
  alive hypotheses, the 2K best extensions, ended ones (EOS or max_len) scored logP / lp into
  the K best finished; stops when the best alive, at the longest length's penalty, cannot beat
  the worst finished one."""
  lp = lambda n: ((5 + n) / 6) ** alpha
  alive, finished = [((), 0.0)], []  # (tokens, logP); (score, tokens)
  for i in range(max_len):
    logps = _next_logps(model, params, src, [seq for seq, _ in alive], max_len)
    cands = sorted(((seq + (t,), score + logps[k, t]) for k, (seq, score) in enumerate(alive)
                    for t in range(logps.shape[1])), key=lambda c: -c[1])[:2 * beam]
    ended = [c for c in cands if c[0][-1] == EOS_ID or i == max_len - 1]
    finished = sorted(finished + [(score / lp(i + 1), seq) for seq, score in ended],
                      reverse=True)[:beam]
    alive = [c for c in cands if c not in ended][:beam]
    if len(finished) == beam and (not alive or alive[0][1] / lp(max_len) < finished[-1][0]):
      break
  return finished


def test_narrow_beam_prunes_as_the_reference_and_misses_the_exhaustive_best():
  vocab, max_len, alpha = 6, 5, 0.6
  model, params = _model(vocab, seed=2, sharpen=1.0)  # Flatter: pruning loses the best.
  missed = 0
  for row in range(6):
    src = jax.random.randint(jax.random.key(10 + row), (1, 5), 3, vocab)
    for beam in (3, 2):
      want = _reference_beam(model, params, src, max_len, beam, alpha)
      tokens, scores = decode.beam_translate(model, params, src, max_len=max_len, beam=beam,
                                             alpha=alpha)
      got = [tuple(int(t) for t in tokens[0, k][:len(seq)]) for k, (_, seq) in enumerate(want)]
      assert got == [seq for _, seq in want], (row, beam)
      np.testing.assert_allclose(np.asarray(scores[0]), [s for s, _ in want], rtol=1e-4)
    wide = decode.beam_translate(model, params, src, max_len=max_len, beam=vocab**max_len,
                                 alpha=alpha)[1]
    missed += float(scores[0, 0]) < float(wide[0, 0]) - 1e-4  # Beam 2's best.
  assert missed, "no row where the narrow beam pruned the best: the case tests nothing"

def test_top_k_one_sampling_equals_greedy_and_is_seeded():
  cfg = model_config.variant("tiny", vocab_size=30, d_model=32, num_heads=2, d_ff=64,
                         num_decoder_layers=2, posemb="t5_bias", dropout=0.0)
  model = model_lib.DecoderOnlyLM(cfg)
  params = model_lib.init_params(model, jax.random.key(0))
  prompt = jnp.array([[BOS_ID, 5, 6, 7], [BOS_ID, 9, 0, 0]])
  lens = jnp.array([4, 2])
  greedy = decode.sample_lm(model, params, prompt, lens, jax.random.key(1), max_len=10,
                            temperature=0.0)
  top1 = decode.sample_lm(model, params, prompt, lens, jax.random.key(2), max_len=10,
                          temperature=1.3, top_k=1)
  np.testing.assert_array_equal(top1, greedy)
  np.testing.assert_array_equal(greedy[:, :4], jnp.array([[BOS_ID, 5, 6, 7],
                                                           [BOS_ID, 9, greedy[1, 2],
                                                            greedy[1, 3]]]))
  # Greedy continuation of row 1 equals argmax of the full model on its own prefix.
  logits = jax.jit(model.apply)({"params": params}, greedy[1:2, :2])
  assert int(greedy[1, 2]) == int(jnp.argmax(logits[0, -1]))
  a = decode.sample_lm(model, params, prompt, lens, jax.random.key(7), max_len=10, top_p=0.9)
  b = decode.sample_lm(model, params, prompt, lens, jax.random.key(7), max_len=10, top_p=0.9)
  np.testing.assert_array_equal(a, b)


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda x: (np.asarray(x) > -1e30).tolist()[0]
  assert kept(decode.filter_logits(logits, top_k=2)) == [True, True, False, False]
  assert kept(decode.filter_logits(logits, top_p=0.7)) == [True, True, False, False]
  assert kept(decode.filter_logits(logits, top_p=0.85)) == [True, True, True, False]
  assert kept(decode.filter_logits(logits, top_p=0.5)) == [True, False, False, False]
