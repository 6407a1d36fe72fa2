"""The Transformer (encoder-decoder) and a decoder-only LM, in flax.linen.

Parameter layout (checkpoints depend on it): each stack's layers live under `.../layers/...` with
a leading axis of size num_layers (logical name "layers"), because the stack is one layer run
under `nn.scan`: one compiled layer whatever the depth, and per-layer rematerialisation
(`scan_unroll` > 1 unrolls the loop for speed on CPU; the parameter layout stays the same).

    Transformer params: embed/embedding [V, D]          (shared source/target/output table)
                        src_embed/embedding [V_src, D]  (only when share_embeddings=False)
                        encoder/{posemb?, layers/*, final_norm?}
                        decoder/{posemb?, layers/*, final_norm?, logits?}
    DecoderOnlyLM params: embed/embedding, decoder/{...} as above, without cross-attention.

Token id 0 is padding everywhere (see xformer.masks); sequences carry explicit positions and
segment ids so packed rows and cached decoding need no special cases.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer import positional
from xformer.model import layers, masks
from xformer.model.attention import MultiHeadAttention
from xformer.model.config import ModelConfig
from xformer.model.layers import EMBED, LAYERS, VOCAB
from xformer.positional import random_positions

Array = jax.Array

_REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "full": None,  # Save nothing; recompute the whole layer in the backward pass.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _residual(cfg: ModelConfig, x: Array, sublayer: Callable[[Array], Array], norm: nn.Module,
              deterministic: bool) -> Array:
  """Post-LN: LN(x + drop(f(x))) as in the paper; pre-LN: x + drop(f(LN(x)))."""
  pre = cfg.norm == "pre"
  y = sublayer(norm(x) if pre else x)
  x = x + layers.Dropout(cfg.dropout)(y, deterministic=deterministic)
  return x if pre else norm(x)


def _norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return layers.layer_norm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, name)


def _attention(cfg: ModelConfig, name: str, rotate_fn=None) -> MultiHeadAttention:
  return MultiHeadAttention(
      num_heads=cfg.num_heads, head_dim=cfg.head_dim, dropout_rate=cfg.attention_dropout,
      rotate_fn=rotate_fn, implementation=cfg.attention_impl, dtype=cfg.dtype,
      param_dtype=cfg.param_dtype, name=name)


LENGTH_IMPLS = ("xla_lengths", "cudnn")  # Attention kernels given lengths, not dense masks.


def _mask_kwargs(mask: Array | dict[str, Array], causal: bool = False) -> dict[str, Any]:
  """Attention keyword arguments of a dense mask, of {"q": [B], "kv": [B]} row lengths, or of
  {"q_segments": [B, T], "kv_segments": [B, S]} segment ids (the splash kernel)."""
  if isinstance(mask, dict) and "q_segments" in mask:
    return dict(mask=None, is_causal=causal, **mask)
  if isinstance(mask, dict):
    return dict(mask=None, is_causal=causal, q_lengths=mask["q"], kv_lengths=mask["kv"])
  return dict(mask=mask)


def _segment_mask(q_segments: Array, kv_segments: Array) -> dict[str, Array]:
  return {"q_segments": q_segments, "kv_segments": kv_segments}


def _lengths(segments: Array | None, tokens: Array) -> Array:
  """[B] real tokens per unpacked row (all of them without segment ids)."""
  if segments is None:
    return jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32)
  return jnp.sum(segments > 0, axis=-1).astype(jnp.int32)


def _feed_forward(cfg: ModelConfig, x: Array, deterministic: bool) -> Array:
  return layers.FeedForward(
      cfg.d_ff, cfg.activation, cfg.ffn_dropout, cfg.dtype, cfg.param_dtype,
      name="ffn")(x, deterministic)


class EncoderLayer(nn.Module):
  """Self-attention and feed-forward, each wrapped in residual + LayerNorm. Scan body."""

  cfg: ModelConfig
  rotate_fn: Callable[[Array, Array, str], Array] | None = None
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array | None, positions: Array):
    cfg, det = self.cfg, self.deterministic
    attn = _attention(cfg, "self_attention", self.rotate_fn)
    x = _residual(cfg, x, lambda y: attn(y, y, bias=bias, positions=positions,
                                         deterministic=det, **_mask_kwargs(mask)),
                  _norm(cfg, "norm_attention"), det)
    x = _residual(cfg, x, lambda y: _feed_forward(cfg, y, det), _norm(cfg, "norm_ffn"), det)
    return x, None  # [B, S, D]


class DecoderLayer(nn.Module):
  """Causal self-attention (KV-cached in decode mode), optional cross-attention, feed-forward."""

  cfg: ModelConfig
  has_cross: bool = True
  rotate_fn: Callable[[Array, Array, str], Array] | None = None
  deterministic: bool = True
  prime: bool = False  # Only fill the cross-attention cache from `encoded` (decoding).

  @nn.compact
  def __call__(self, x: Array, encoded: Array | None, self_mask: Array, cross_mask: Array | None,
               bias: Array | None, positions: Array, decode_index: Array | None):
    cfg, det = self.cfg, self.deterministic
    if self.prime:
      _attention(cfg, "cross_attention")(x, encoded, mask=None, cross_cache="fill")
      return x, None
    attn = _attention(cfg, "self_attention", self.rotate_fn)
    x = _residual(cfg, x, lambda y: attn(y, y, bias=bias, positions=positions,
                                         deterministic=det, decode_index=decode_index,
                                         **_mask_kwargs(self_mask, causal=True)),
                  _norm(cfg, "norm_attention"), det)
    if self.has_cross:
      cross = _attention(cfg, "cross_attention")
      cache = "read" if decode_index is not None else None
      x = _residual(cfg, x, lambda y: cross(y, encoded, deterministic=det, cross_cache=cache,
                                            **_mask_kwargs(cross_mask)),
                    _norm(cfg, "norm_cross"), det)
    x = _residual(cfg, x, lambda y: _feed_forward(cfg, y, det), _norm(cfg, "norm_ffn"), det)
    return x, None  # [B, T, D]


def _stack(layer_cls: type[nn.Module], cfg: ModelConfig, num_layers: int, num_args: int):
  """`layer_cls` rematerialised per cfg.remat and scanned `num_layers` times."""
  if cfg.remat != "none":
    # In a loop XLA cannot merge the recomputation into the forward pass; unrolled (only the
    # compile tool's cost-model compile does that with remat) it needs jax's barrier.
    layer_cls = nn.remat(layer_cls, prevent_cse=cfg.scan_unroll > 1,
                         policy=_REMAT_POLICIES[cfg.remat])
  return nn.scan(
      layer_cls,
      variable_axes={"params": 0, "cache": 0, "intermediates": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * num_args,
      length=num_layers,
      unroll=min(cfg.scan_unroll, max(num_layers, 1)),
      metadata_params={nn.PARTITION_NAME: LAYERS},
  )


def _embedding(cfg: ModelConfig, vocab_size: int, name: str) -> nn.Embed:
  # std D^-0.5 so that the sqrt(D)-scaled embedding has unit variance (as in tensor2tensor).
  init = nn.initializers.normal(stddev=cfg.d_model**-0.5)
  return nn.Embed(vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  embedding_init=nn.with_logical_partitioning(init, (VOCAB, EMBED)), name=name)


def _posemb(cfg: ModelConfig, bidirectional: bool) -> positional.PositionalEncoding:
  return positional.make(cfg.posemb, dict(cfg.posemb_kw), d_model=cfg.d_model,
                         num_heads=cfg.num_heads, max_len=cfg.max_len, bidirectional=bidirectional,
                         param_dtype=cfg.param_dtype, name="posemb")


def _embed_tokens(cfg: ModelConfig, embed: nn.Embed, pe: positional.PositionalEncoding,
                  tokens: Array, positions: Array, deterministic: bool) -> Array:
  """Scaled token embeddings plus the additive positional encoding, then dropout (section 3.4)."""
  x = embed(tokens) * jnp.sqrt(cfg.d_model).astype(cfg.dtype)  # [B, T, D]
  if positional.ADD in pe.HOOKS:
    x = x + pe.embed(positions).astype(x.dtype)
  return layers.Dropout(cfg.dropout)(x, deterministic=deterministic)


def _train_positions(module: nn.Module, cfg: ModelConfig, tokens: Array, positions: Array,
                     deterministic: bool) -> Array:
  """`positions`, or in training with model.random_positions a random sorted subset per segment."""
  if not cfg.random_positions or deterministic:
    return positions
  return random_positions.sample(module.make_rng("dropout"), positions, tokens != 0,
                                 cfg.random_positions)  # [B, T]


def _default_positions(tokens: Array, start: Array | int = 0) -> Array:
  return jnp.broadcast_to(start + jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


class Encoder(nn.Module):
  """Embeds source tokens and runs the encoder stack. Returns [B, S, D]."""

  cfg: ModelConfig
  embed: nn.Embed

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, segments: Array, deterministic: bool):
    cfg = self.cfg
    pe = _posemb(cfg, bidirectional=True)
    positions = _train_positions(self, cfg, tokens, positions, deterministic)  # [B, S]
    x = _embed_tokens(cfg, self.embed, pe, tokens, positions, deterministic)  # [B, S, D]
    if cfg.attention_impl in LENGTH_IMPLS:  # Unpacked rows: real tokens first.
      mask = {"q": _lengths(segments, tokens), "kv": _lengths(segments, tokens)}
    elif cfg.attention_impl == "splash":
      mask = _segment_mask(segments, segments)
    else:
      mask = masks.attention_mask(segments, segments)  # [B, 1, S, S]
    bias = pe.bias(positions, positions) if positional.BIAS in pe.HOOKS else None
    rotate = pe.rotate_fn() if positional.ROTATE in pe.HOOKS else None
    stack = _stack(EncoderLayer, cfg, cfg.num_encoder_layers, num_args=3)
    x, _ = stack(cfg, rotate, deterministic, name="layers")(x, mask, bias, positions)
    return _norm(cfg, "final_norm")(x) if cfg.norm == "pre" else x


class Decoder(nn.Module):
  """Embeds target tokens, runs the causal decoder stack and projects to vocabulary logits.

  In decode mode the KV cache lives in the `cache` collection: `index` (next slot), `positions`
  ([B, L], the position of the token in each slot) and each layer's keys and values. The first
  call with decode=True (through `init_cache`) only fixes the cache length L = tokens.shape[1].
  """

  cfg: ModelConfig
  embed: nn.Embed
  has_cross: bool

  def setup(self):
    if not self.cfg.tie_output:  # Parameters decoder/logits/{kernel, bias}.
      self.logits = layers.dense(self.cfg.vocab_size, (EMBED, VOCAB), use_bias=True,
                                 dtype=self.cfg.dtype, param_dtype=self.cfg.param_dtype,
                                 name=None)

  @nn.compact
  def __call__(self, tokens: Array, encoded: Array | None, enc_segments: Array | None,
               positions: Array | None, segments: Array | None, deterministic: bool,
               decode: bool, return_hidden: bool = False, prime: bool = False) -> Array | None:
    cfg = self.cfg
    if prime:  # Cross-attention keys and values of `encoded` into the cache, once per sequence.
      stack = _stack(DecoderLayer, cfg, cfg.num_decoder_layers, num_args=6)
      stack(cfg, self.has_cross, None, True, True, name="layers")(
          encoded[:, :1], encoded, None, None, None, None, None)
      return None
    batch, length = tokens.shape
    decode_index = None
    if decode:
      initialized = self.has_variable("cache", "index")
      index = self.variable("cache", "index", jnp.zeros, (), jnp.int32)
      slot_pos = self.variable("cache", "positions", jnp.zeros, (batch, length), jnp.int32)
      decode_index = index.value
      if positions is None:
        positions = _default_positions(tokens, decode_index)
      if initialized:
        slot_pos.value = jax.lax.dynamic_update_slice(slot_pos.value, positions, (0, decode_index))
        index.value = decode_index + length
      key_positions = slot_pos.value  # [B, L]
      self_mask = masks.decode_mask(decode_index, length, key_positions.shape[1])  # [1,1,T,L]
    else:
      positions = _default_positions(tokens) if positions is None else positions
      positions = _train_positions(self, cfg, tokens, positions, deterministic)  # [B, T]
      key_positions = positions
      if segments is None:
        self_mask = masks.causal_mask(length, length)[None, None]  # [1, 1, T, T]
      else:
        self_mask = masks.attention_mask(segments, segments, causal=True)  # [B, 1, T, T]

    cross_mask = None
    if cfg.attention_impl == "splash" and not decode:
      segments = jnp.ones_like(tokens) if segments is None else segments
      self_mask = _segment_mask(segments, segments)
      if self.has_cross:
        cross_mask = _segment_mask(segments, enc_segments)
    elif cfg.attention_impl in LENGTH_IMPLS and not decode:  # Unpacked rows, fused kernels.
      tgt_lengths = _lengths(segments, tokens)
      self_mask = {"q": tgt_lengths, "kv": tgt_lengths}
      if self.has_cross:
        cross_mask = {"q": tgt_lengths, "kv": jnp.sum(enc_segments > 0, -1).astype(jnp.int32)}
    elif self.has_cross:
      if segments is not None and not decode:  # Packed: queries see their own source segment.
        cross_mask = masks.attention_mask(segments, enc_segments)  # [B, 1, T, S]
      else:
        cross_mask = masks.key_padding_mask(enc_segments)  # [B, 1, 1, S]

    pe = _posemb(cfg, bidirectional=False)
    x = _embed_tokens(cfg, self.embed, pe, tokens, positions, deterministic)  # [B, T, D]
    bias = pe.bias(positions, key_positions) if positional.BIAS in pe.HOOKS else None
    rotate = pe.rotate_fn() if positional.ROTATE in pe.HOOKS else None
    stack = _stack(DecoderLayer, cfg, cfg.num_decoder_layers, num_args=6)
    x, _ = stack(cfg, self.has_cross, rotate, deterministic, name="layers")(
        x, encoded, self_mask, cross_mask, bias, positions, decode_index)
    if cfg.norm == "pre":
      x = _norm(cfg, "final_norm")(x)
    if return_hidden:  # [B, T, D], for a loss that projects chunk by chunk (`project`).
      return x
    return self.project(x)  # [B, T, V]

  def project(self, x: Array) -> Array:
    """Final hidden states [..., D] -> vocabulary logits [..., V] (model.logits_dtype)."""
    cfg = self.cfg
    if cfg.tie_output:
      return layers.tied_logits(x.astype(cfg.dtype), self.embed.embedding, cfg.fused_output,
                                cfg.logits_dtype)
    return self.logits(x.astype(cfg.dtype)).astype(cfg.logits_dtype)  # [..., V]


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
    self.encoder = Encoder(cfg, src_embed)
    self.decoder = Decoder(cfg, self.embed, has_cross=True)

  def encode(self, src: Array, src_positions: Array | None = None,
             src_segments: Array | None = None, deterministic: bool = True) -> Array:
    """Source tokens [B, S] -> encoder output [B, S, D]."""
    src_segments = masks.segments_from_tokens(src) if src_segments is None else src_segments
    src_positions = _default_positions(src) if src_positions is None else src_positions
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


class DecoderOnlyLM(nn.Module):
  """Decoder-only causal language model (GPT style); depth is cfg.num_decoder_layers."""

  cfg: ModelConfig

  @staticmethod
  def example_inputs(batch: int, length: int) -> tuple[Array]:
    """Positional inputs (tokens,) of `init`: only their shapes matter."""
    return (jnp.ones((batch, length), jnp.int32),)

  def setup(self):
    self.embed = _embedding(self.cfg, self.cfg.vocab_size, "embed")
    self.decoder = Decoder(self.cfg, self.embed, has_cross=False)

  def __call__(self, tokens: Array, positions: Array | None = None, segments: Array | None = None,
               deterministic: bool = True, decode: bool = False,
               return_hidden: bool = False) -> Array:
    """Next-token logits [B, T, V] float32 for tokens [B, T] (or the final hidden states)."""
    return self.decoder(tokens, None, None, positions, segments, deterministic, decode,
                        return_hidden)

  def project(self, hidden: Array) -> Array:
    """Final hidden states [B, T, D] -> logits [B, T, V] float32 (the output layer)."""
    return self.decoder.project(hidden)


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
