"""Decoding with the KV cache: greedy and beam-search translation, LM sampling.

Every decoder here runs the model one token per step against its cache (`model.init_cache`
gives an empty one), inside a `lax.while_loop` that stops when every row has produced EOS.
`translate` is the one dispatcher (greedy or beam) every caller goes through.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from xformer import errors
from xformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from xformer.model import masks, transformer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Settings:
  """How translations are decoded (config.decode): `beam_size` hypotheses (1: greedy), GNMT
  length penalty `alpha`, outputs up to `max_extra` tokens longer than their source."""

  beam_size: int = 1
  alpha: float = 0.6
  max_extra: int = 50

  def check(self) -> None:
    """Validates config.decode (a ConfigError naming the field)."""
    if self.beam_size < 1:
      raise errors.ConfigError(f"decode.beam_size must be >= 1, got {self.beam_size}.")
    if self.max_extra < 0:
      raise errors.ConfigError(f"decode.max_extra must be >= 0, got {self.max_extra}.")


def translation_step(model: transformer.Transformer, params: Any, encoded: Array,
                      src_segments: Array):
  """The cached decoder step of a translation model: (cache, tokens [B, 1]) -> (logits [B, V],
  cache)."""

  def step_fn(cache, token):
    logits, state = model.apply({"params": params, "cache": cache}, encoded, src_segments,
                                token, decode=True, method="decode", mutable=["cache"])
    return logits[:, -1], state["cache"]

  return step_fn


def translation_cache(model: transformer.Transformer, params: Any, encoded: Array, max_len: int,
                      cache_cross: bool = True) -> Any:
  """The decode cache of `encoded` [B, S, D]: empty self-attention slots for `max_len` tokens
  and (cache_cross) the cross-attention keys and values of every layer, projected once here
  instead of at every step."""
  cache = transformer.init_cache(model, encoded.shape[0], max_len)
  if not cache_cross:
    return cache
  _, state = model.apply({"params": params, "cache": cache}, encoded, method="prime_cache",
                         mutable=["cache"])
  return state["cache"]


@functools.partial(jax.jit, static_argnames=("model", "max_len", "cache_cross"))
def greedy_translate(model: transformer.Transformer, params: Any, src: Array,
                     max_len: int, cache_cross: bool = True) -> tuple[Array, Array]:
  """Greedy translation of source rows src [B, S] (0-padded, EOS-terminated).

  Returns:
    (tokens [B, max_len] int32 with EOS and 0 after it, log-probabilities [B] of the outputs).
  """
  batch = src.shape[0]
  src_segments = masks.segments_from_tokens(src)
  encoded = model.apply({"params": params}, src, method="encode")  # [B, S, D]
  cache = translation_cache(model, params, encoded, max_len, cache_cross)
  return _greedy_loop(translation_step(model, params, encoded, src_segments), cache, batch,
                      max_len)


def _greedy_loop(step_fn, cache, batch: int, max_len: int) -> tuple[Array, Array]:
  out = jnp.zeros((batch, max_len), jnp.int32)
  token = jnp.full((batch, 1), BOS_ID, jnp.int32)
  done = jnp.zeros((batch,), bool)
  logp = jnp.zeros((batch,), jnp.float32)

  def cond(carry):
    i, _, _, _, done, _ = carry
    return (i < max_len) & ~jnp.all(done)

  def body(carry):
    i, cache, token, out, done, logp = carry
    logits, cache = step_fn(cache, token)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B]
    chosen = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                                 nxt[:, None], axis=-1)[:, 0]  # [B]
    logp = logp + jnp.where(done, 0.0, chosen)
    nxt = jnp.where(done, PAD_ID, nxt)
    out = out.at[:, i].set(nxt)
    return i + 1, cache, nxt[:, None], out, done | (nxt == EOS_ID), logp

  carry = (0, cache, token, out, done, logp)
  _, _, _, out, _, logp = jax.lax.while_loop(cond, body, carry)
  return out, logp


def translate(model: transformer.Transformer, params: Any, src: Array, *, max_len: int,
              beam: int = 1, alpha: float = 0.6) -> tuple[Array, Array]:
  """The one decode dispatcher of translation (training's BLEU, the evaluate CLI, notebooks).

  Greedy for beam 1 (score: the output's log-probability), else beam search (scores: logP /
  GNMT length penalty).

  Returns:
    (tokens [B, K, max_len], scores [B, K]), best first; K = beam.
  """
  if beam == 1:
    tokens, logp = greedy_translate(model, params, src, max_len)
    return tokens[:, None], logp[:, None]
  return beam_translate(model, params, src, max_len, beam, alpha)


def length_penalty(length: Array, alpha: float) -> Array:
  """GNMT's length penalty ((5 + |Y|) / 6)^alpha (Wu et al. 2016); scores are logP / lp."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _gather_beams(tree: Any, indices: Array, batch: int, beam: int) -> Any:
  """Selects beams: every [.., B*K, ..] leaf (batch axis 1 inside scanned layer stacks, else 0)
  is re-indexed by indices [B, K] of beams to keep."""
  flat = (indices + jnp.arange(batch)[:, None] * beam).reshape(-1)  # [B*K]

  def gather(path, x):
    if x.ndim == 0 or getattr(path[-1], "key", None) in ("cross_key", "cross_value"):
      return x  # The beams of one source share its cross-attention keys and values.
    axis = 1 if any(getattr(k, "key", None) == "layers" for k in path) else 0
    return jnp.take(x, flat, axis=axis)

  return jax.tree_util.tree_map_with_path(gather, tree)


def beam_search_loop(step_fn, cache: Any, batch: int, beam: int, max_len: int,
                     alpha: float) -> tuple[Array, Array]:
  """Beam search over a cached `step_fn(cache, tokens [B*K, 1]) -> (logits [B*K, V], cache)`.

  Keeps K alive hypotheses and the K best finished ones (ended by EOS, scored logP / lp(length))
  per row; stops at max_len or when no alive hypothesis can still beat the worst finished one.

  Returns:
    (tokens [B, K, max_len] with EOS and 0-padding, scores [B, K]), best first.
  """
  neg_inf = jnp.float32(-1e9)
  alive_seq = jnp.zeros((batch, beam, max_len), jnp.int32)
  alive_logp = jnp.tile(jnp.array([0.0] + [neg_inf] * (beam - 1), jnp.float32), (batch, 1))
  fin_seq = jnp.zeros((batch, beam, max_len), jnp.int32)
  fin_score = jnp.full((batch, beam), neg_inf, jnp.float32)

  def cond(carry):
    i, _, _, alive_logp, _, fin_score = carry
    best_possible = alive_logp[:, 0] / length_penalty(jnp.asarray(max_len), alpha)
    done = jnp.all((fin_score[:, -1] > neg_inf) & (best_possible < fin_score[:, -1]))
    return (i < max_len) & ~done

  def body(carry):
    i, cache, alive_seq, alive_logp, fin_seq, fin_score = carry
    prev = jnp.where(i == 0, BOS_ID, alive_seq[:, :, jnp.maximum(i - 1, 0)])  # [B, K]
    logits, cache = step_fn(cache, prev.reshape(-1, 1))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, beam, -1)  # [B,K,V]
    vocab = logp.shape[-1]
    cand = (alive_logp[:, :, None] + logp).reshape(batch, -1)  # [B, K*V]
    top_logp, top_idx = jax.lax.top_k(cand, min(2 * beam, beam * vocab))  # [B, 2K]
    src_beam, token = top_idx // vocab, top_idx % vocab
    seqs = jnp.take_along_axis(alive_seq, src_beam[:, :, None], axis=1)
    seqs = seqs.at[:, :, i].set(token)  # [B, 2K, L]
    ended = (token == EOS_ID) | (i == max_len - 1)
    # Finished: merge newly ended hypotheses into the K best finished ones.
    new_score = jnp.where(ended, top_logp / length_penalty(i + 1, alpha), neg_inf)
    all_score = jnp.concatenate([fin_score, new_score], axis=1)  # [B, 3K]
    all_seq = jnp.concatenate([fin_seq, seqs], axis=1)
    fin_score, keep = jax.lax.top_k(all_score, beam)
    fin_seq = jnp.take_along_axis(all_seq, keep[:, :, None], axis=1)
    # Alive: the K best hypotheses that did not end.
    alive_cand = jnp.where(ended, neg_inf, top_logp)
    alive_logp, keep = jax.lax.top_k(alive_cand, beam)  # [B, K]
    alive_seq = jnp.take_along_axis(seqs, keep[:, :, None], axis=1)
    cache = _gather_beams(cache, jnp.take_along_axis(src_beam, keep, axis=1), batch, beam)
    return i + 1, cache, alive_seq, alive_logp, fin_seq, fin_score

  carry = (0, cache, alive_seq, alive_logp, fin_seq, fin_score)
  _, _, _, _, fin_seq, fin_score = jax.lax.while_loop(cond, body, carry)
  return fin_seq, fin_score


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam", "alpha", "cache_cross"))
def beam_translate(model: transformer.Transformer, params: Any, src: Array, max_len: int,
                   beam: int = 4, alpha: float = 0.6,
                   cache_cross: bool = True) -> tuple[Array, Array]:
  """Beam search translation of src [B, S]: n-best tokens [B, K, max_len] and scores [B, K]."""
  batch = src.shape[0]
  src = jnp.repeat(src, beam, axis=0)  # [B*K, S]
  src_segments = masks.segments_from_tokens(src)
  encoded = model.apply({"params": params}, src, method="encode")  # [B*K, S, D]
  cache = translation_cache(model, params, encoded, max_len, cache_cross)
  return beam_search_loop(translation_step(model, params, encoded, src_segments), cache, batch,
                          beam, max_len, alpha)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam", "alpha"))
def recompute_translate(model: transformer.Transformer, params: Any, src: Array, max_len: int,
                        beam: int = 1, alpha: float = 0.6) -> Array:
  """Reference decoding without a KV cache: every step re-runs the decoder over the whole
  output buffer [B*K, max_len] (causal, so later slots do not matter) and reads one position.
  Same loops as greedy_translate / beam_translate; for tests and the decode benchmark.

  Returns:
    [B, max_len] tokens (greedy) or, for beam > 1, the n-best [B, K, max_len] and scores.
  """
  batch = src.shape[0]
  src = jnp.repeat(src, beam, axis=0)  # [B*K, S]
  src_segments = masks.segments_from_tokens(src)
  encoded = model.apply({"params": params}, src, method="encode")  # [B*K, S, D]
  state = {"tokens": jnp.zeros((batch * beam, max_len), jnp.int32), "i": jnp.int32(0)}

  def step_fn(state, token):
    tokens = jax.lax.dynamic_update_slice(state["tokens"], token, (0, state["i"]))
    logits = model.apply({"params": params}, encoded, src_segments, tokens, method="decode")
    logits = jax.lax.dynamic_index_in_dim(logits, state["i"], axis=1, keepdims=False)
    return logits, {"tokens": tokens, "i": state["i"] + 1}  # [B*K, V]

  if beam == 1:
    return _greedy_loop(step_fn, state, batch, max_len)[0]
  return beam_search_loop(step_fn, state, batch, beam, max_len, alpha)


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Masks logits [B, V] outside the top-k tokens and outside the smallest set whose
  probability reaches top_p (nucleus sampling, Holtzman et al. 2020). 0 / 1.0 disable them."""
  neg_inf = jnp.finfo(jnp.float32).min
  logits = logits.astype(jnp.float32)
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # Mass of strictly more likely tokens.
    cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, neg_inf, logits)
  return logits


@functools.partial(jax.jit, static_argnames=("model", "max_len", "temperature", "top_k",
                                             "top_p"))
def sample_lm(model: transformer.DecoderOnlyLM, params: Any, prompt: Array, prompt_len: Array,
              rng: Array, max_len: int, temperature: float = 1.0, top_k: int = 0,
              top_p: float = 1.0) -> Array:
  """Continues prompts with a decoder-only LM, one cached step per token.

  Args:
    prompt: [B, P] prompt tokens (BOS first), left-aligned, 0-padded; P <= max_len.
    prompt_len: [B] prompt lengths; rows are fed their own prompt, then their own samples.
    rng: sampling key (same key, same samples). temperature 0 means greedy (argmax).
    max_len: total length of the returned rows (prompt included).

  Returns:
    [B, max_len] tokens: the prompt, then sampled tokens; 0 after a sampled EOS.
  """
  batch = prompt.shape[0]
  out = jnp.zeros((batch, max_len), jnp.int32).at[:, :prompt.shape[1]].set(prompt)
  cache = transformer.init_cache(model, batch, max_len)

  def body(i, carry):
    cache, out, done = carry
    token = jax.lax.dynamic_slice_in_dim(out, i, 1, axis=1)  # [B, 1]
    logits, state = model.apply({"params": params, "cache": cache}, token, decode=True,
                                mutable=["cache"])
    logits = logits[:, -1]  # [B, V]
    if temperature == 0.0:
      nxt = jnp.argmax(logits, axis=-1)
    else:
      nxt = jax.random.categorical(jax.random.fold_in(rng, i),
                                   filter_logits(logits / temperature, top_k, top_p))
    in_prompt = i + 1 < prompt_len
    forced = jax.lax.dynamic_slice_in_dim(out, i + 1, 1, axis=1)[:, 0]  # [B]
    nxt = jnp.where(in_prompt, forced, jnp.where(done, PAD_ID, nxt)).astype(jnp.int32)
    done = done | (~in_prompt & (nxt == EOS_ID))
    return state["cache"], out.at[:, i + 1].set(nxt), done

  _, out, _ = jax.lax.fori_loop(0, max_len - 1, body,
                                (cache, out, jnp.zeros((batch,), bool)))
  return out
