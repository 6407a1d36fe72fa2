"""Decoding with the KV cache: greedy (beam search and sampling build on the same step).

Every decoder here runs the model one token per step against its cache (`model.init_cache`
gives an empty one), inside a `lax.while_loop` that stops when every row has produced EOS.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from xformer import masks
from xformer import model as model_lib
from xformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def greedy_translate(model: model_lib.Transformer, params: Any, src: Array,
                     max_len: int) -> Array:
  """Greedy translation of source rows src [B, S] (0-padded, EOS-terminated).

  Returns:
    [B, max_len] int32 output tokens, EOS included, 0 after it.
  """
  batch = src.shape[0]
  src_segments = masks.segments_from_tokens(src)
  encoded = model.apply({"params": params}, src, method="encode")  # [B, S, D]
  cache = model_lib.init_cache(model, batch, max_len)

  def step_fn(cache, token):
    logits, state = model.apply({"params": params, "cache": cache}, encoded, src_segments,
                                token, decode=True, method="decode", mutable=["cache"])
    return logits[:, -1], state["cache"]  # [B, V]

  return _greedy_loop(step_fn, cache, batch, max_len)


def _greedy_loop(step_fn, cache, batch: int, max_len: int) -> Array:
  out = jnp.zeros((batch, max_len), jnp.int32)
  token = jnp.full((batch, 1), BOS_ID, jnp.int32)
  done = jnp.zeros((batch,), bool)

  def cond(carry):
    i, _, _, _, done = carry
    return (i < max_len) & ~jnp.all(done)

  def body(carry):
    i, cache, token, out, done = carry
    logits, cache = step_fn(cache, token)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B]
    nxt = jnp.where(done, PAD_ID, nxt)
    out = out.at[:, i].set(nxt)
    return i + 1, cache, nxt[:, None], out, done | (nxt == EOS_ID)

  _, _, _, out, _ = jax.lax.while_loop(cond, body, (0, cache, token, out, done))
  return out
