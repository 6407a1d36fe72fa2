"""The Transformer (encoder-decoder) and a decoder-only LM, in flax.linen.

Parameter layout (checkpoints depend on it): each stack's layers live under `.../layers/...` with
a leading axis of size num_layers (logical name "layers"), because the stack is one layer run
under `nn.scan`: one compiled layer whatever the depth, and per-layer rematerialisation
(`scan_unroll` > 1 unrolls the loop for speed on CPU; the parameter layout stays the same). The
stacks are xformer/model/stacks.py.

    Transformer params: embed/embedding [V, D]          (shared source/target/output table)
                        src_embed/embedding [V_src, D]  (only when share_embeddings=False)
                        encoder/{posemb?, layers/*, final_norm?}
                        decoder/{posemb?, layers/*, final_norm?, logits?}
    DecoderOnlyLM params: embed/embedding, decoder/{...} as above, without cross-attention.

Token id 0 is padding everywhere (see xformer/model/masks.py); sequences carry explicit positions and
segment ids so packed rows and cached decoding need no special cases.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer.model import masks, stacks
from xformer.model.config import ModelConfig
from xformer.model.layers import EMBED, VOCAB

Array = jax.Array


def _embedding(cfg: ModelConfig, vocab_size: int, name: str) -> nn.Embed:
  # std D^-0.5 so that the sqrt(D)-scaled embedding has unit variance (as in tensor2tensor).
  init = nn.initializers.normal(stddev=cfg.d_model**-0.5)
  return nn.Embed(vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  embedding_init=nn.with_logical_partitioning(init, (VOCAB, EMBED)), name=name)


class Transformer(nn.Module):
  """Encoder-decoder Transformer (Vaswani et al. 2017).

  `tgt_in` is the decoder input, the target shifted right behind a BOS token; the data pipeline
  builds it, so packed rows shift per segment.
  """

  cfg: ModelConfig

  @staticmethod
  def example_inputs(batch: int, length: int) -> tuple[Array, Array]:
    """Positional inputs (src, tgt_in) of `init`: only their shapes matter."""
    tokens = jnp.ones((batch, length), jnp.int32)
    return tokens, tokens

  def setup(self):
    cfg = self.cfg
    self.embed = _embedding(cfg, cfg.vocab_size, "embed")
    src_embed = self.embed if cfg.share_embeddings else _embedding(
        cfg, cfg.vocab_size, "src_embed")
    self.encoder = stacks.Encoder(cfg, src_embed)
    self.decoder = stacks.Decoder(cfg, self.embed, has_cross=True)

  def encode(self, src: Array, src_positions: Array | None = None,
             src_segments: Array | None = None, deterministic: bool = True) -> Array:
    """Source tokens [B, S] -> encoder output [B, S, D]."""
    src_segments = masks.segments_from_tokens(src) if src_segments is None else src_segments
    src_positions = stacks.default_positions(src) if src_positions is None else src_positions
    return self.encoder(src, src_positions, src_segments, deterministic)

  def decode(self, encoded: Array, src_segments: Array, tgt_in: Array,
             tgt_positions: Array | None = None, tgt_segments: Array | None = None,
             deterministic: bool = True, decode: bool = False,
             return_hidden: bool = False) -> Array:
    """Encoder output [B, S, D], source segment ids [B, S] and decoder input [B, T] -> logits
    [B, T, V] float32. With decode=True, `tgt_in` continues the cached prefix."""
    return self.decoder(tgt_in, encoded, src_segments, tgt_positions, tgt_segments,
                        deterministic, decode, return_hidden)

  def prime_cache(self, encoded: Array) -> None:
    """Fills the decode cache's cross-attention keys and values from the encoder output
    [B, S, D] (apply with mutable=["cache"]); decode steps then read them instead of projecting
    the encoder output again at every step."""
    self.decoder(None, encoded, None, None, None, True, True, prime=True)

  def __call__(self, src: Array, tgt_in: Array, src_positions: Array | None = None,
               tgt_positions: Array | None = None, src_segments: Array | None = None,
               tgt_segments: Array | None = None, deterministic: bool = True,
               decode: bool = False, return_hidden: bool = False) -> Array:
    """Teacher-forced logits [B, T, V] for source [B, S] and decoder input [B, T]."""
    src_segments = masks.segments_from_tokens(src) if src_segments is None else src_segments
    encoded = self.encode(src, src_positions, src_segments, deterministic)
    return self.decode(encoded, src_segments, tgt_in, tgt_positions, tgt_segments,
                       deterministic, decode, return_hidden)

  def project(self, hidden: Array) -> Array:
    """Decoder hidden states [B, T, D] -> logits [B, T, V] float32 (the output layer)."""
    return self.decoder.project(hidden)

  def output_weights(self) -> tuple[Array, Array | None]:
    """The output layer's (table [V, D], bias [V] or None) in the compute dtype."""
    return self.decoder.output_weights()


class DecoderOnlyLM(nn.Module):
  """Decoder-only causal language model (GPT style); depth is cfg.num_decoder_layers."""

  cfg: ModelConfig

  @staticmethod
  def example_inputs(batch: int, length: int) -> tuple[Array]:
    """Positional inputs (tokens,) of `init`: only their shapes matter."""
    return (jnp.ones((batch, length), jnp.int32),)

  def setup(self):
    self.embed = _embedding(self.cfg, self.cfg.vocab_size, "embed")
    self.decoder = stacks.Decoder(self.cfg, self.embed, has_cross=False)

  def __call__(self, tokens: Array, positions: Array | None = None, segments: Array | None = None,
               deterministic: bool = True, decode: bool = False,
               return_hidden: bool = False) -> Array:
    """Next-token logits [B, T, V] float32 for tokens [B, T] (or the final hidden states)."""
    return self.decoder(tokens, None, None, positions, segments, deterministic, decode,
                        return_hidden)

  def project(self, hidden: Array) -> Array:
    """Final hidden states [B, T, D] -> logits [B, T, V] float32 (the output layer)."""
    return self.decoder.project(hidden)

  def output_weights(self) -> tuple[Array, Array | None]:
    """The output layer's (table [V, D], bias [V] or None) in the compute dtype."""
    return self.decoder.output_weights()


Model = Transformer | DecoderOnlyLM


def init_params(model: Model, rng: Array, batch_size: int = 1, length: int = 8) -> Any:
  """Initialised parameters, unboxed (logical axis metadata stripped)."""
  inputs = model.example_inputs(batch_size, length)
  return nn.unbox(jax.jit(model.init)(rng, *inputs)["params"])


def logical_axes(model: Model) -> Any:
  """Pytree of logical axis names (a PartitionSpec per parameter), without allocating params."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *model.example_inputs(1, 8)))
  return nn.get_partition_spec(boxed["params"])


def init_cache(model: Model, batch_size: int, max_len: int) -> Any:
  """An empty KV cache for decoding up to `max_len` tokens, without running the model: the
  decode-mode initialisation call fixes its length (the last input's, for both models)."""
  *first, last = model.example_inputs(batch_size, max_len)
  inputs = (*[x[:, :1] for x in first], last)  # Sources (if any) of length 1: only shapes count.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, decode=True))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
