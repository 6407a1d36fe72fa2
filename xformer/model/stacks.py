"""The encoder and decoder stacks: their layers, run under `nn.scan` (one compiled layer
whatever the depth; `scan_unroll` > 1 unrolls the loop, the parameter layout stays the same).

Each stack builds what its layers share once per batch (positions, the attention masks as
`masks.Mask` values, a positional bias) into a `Context`, handed to every layer by name.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer import positional
from xformer.model import flash_xla, layers, masks, splash
from xformer.model.attention import MultiHeadAttention
from xformer.model.config import ModelConfig
from xformer.model.layers import EMBED, LAYERS, VOCAB
from xformer.positional import random_positions

Array = jax.Array

_REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "full": None,  # Save nothing; recompute the whole layer in the backward pass.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    # As dots_no_batch, and the output and row statistics of the fused attention (splash, or
    # flash_xla with attention_chunk > 0): the backward pass recomputes elementwise work, not
    # the attention's forward pass.
    "minimal": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        jax.checkpoint_policies.save_only_these_names(*flash_xla.SAVED_NAMES, splash.SAVED_NAME)),
}
# remat="ffn" and "ffn_act" are no layer policies: `_ffn_residual` rematerialises the
# feed-forward block alone, "ffn" from its input (its [B*T, F] arrays, the largest, and W1's
# product recomputed), "ffn_act" from its pre-activations (only the activation recomputed).
_FFN_POLICIES = {"ffn": jax.checkpoint_policies.nothing_saveable,
                 "ffn_act": jax.checkpoint_policies.save_only_these_names(layers.FFN_PRE)}
# (No policy can say "all but the hidden layer": a value refused by name is saved under the
# name of the op that made it, and jax's save_anything_except_these_names saves everything.)


def _residual(cfg: ModelConfig, x: Array, sublayer: Callable[[Array], Array],
              norm: nn.Module | None, deterministic: bool) -> Array:
  """Post-LN: LN(x + drop(f(x))) as in the paper; pre-LN: x + drop(f(LN(x))), where norm None
  (pre-LN only) means the sublayer applies the LN itself."""
  pre = cfg.norm == "pre"
  y = sublayer(norm(x) if pre and norm is not None else x)
  x = x + layers.Dropout(cfg.dropout)(y, deterministic=deterministic)
  return x if pre else norm(x)


def _norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return layers.layer_norm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, name)


def _attention(cfg: ModelConfig, name: str, rotate_fn=None) -> MultiHeadAttention:
  return MultiHeadAttention(
      num_heads=cfg.num_heads, head_dim=cfg.head_dim, dropout_rate=cfg.attention_dropout,
      rotate_fn=rotate_fn, implementation=cfg.attention_impl, chunk=cfg.attention_chunk,
      fused_qkv=cfg.fused_qkv, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)


def _ffn_residual(cfg: ModelConfig, layer: nn.Module, x: Array, deterministic: bool) -> Array:
  """The feed-forward sublayer of `layer` with its residual and LayerNorm ("norm_ffn").

  Under remat="ffn"/"ffn_act" the block is rematerialised; under "ffn" with pre-LN its
  LayerNorm with it: the norm's output, the block's input, is then recomputed from the residual
  stream (kept anyway) instead of kept as one more [B, T, D] array per layer. ("ffn_act"
  recomputes the activation alone: with the norm too it was slower, benchmarks/README.md.)"""
  inside = cfg.remat == "ffn" and cfg.norm == "pre"

  def block(mdl: nn.Module, y: Array) -> Array:  # Modules made here belong to `mdl` (`layer`).
    del mdl
    if inside:
      y = _norm(cfg, "norm_ffn")(y)
    return layers.FeedForward(cfg.d_ff, cfg.activation, cfg.ffn_dropout, cfg.dtype,
                              cfg.param_dtype, name="ffn")(y, deterministic)

  if cfg.remat in _FFN_POLICIES:
    block = nn.remat(block, prevent_cse=cfg.scan_unroll > 1, policy=_FFN_POLICIES[cfg.remat])
  return _residual(cfg, x, lambda y: block(layer, y), None if inside else _norm(cfg, "norm_ffn"),
                   deterministic)


@struct.dataclass
class Context:
  """What every layer of a stack reads besides its input: built once per batch by the stack.

  Attributes:
    self_mask: self-attention's mask (with the cache slot when decoding).
    positions: [B, T] positions of the layer's tokens (for a rotating encoding).
    bias: [B|1, N, T, S] float32 logit bias of a BIAS encoding, or None.
    encoded: [B, S, D] encoder output (decoder layers with cross-attention), or None.
    cross_mask: cross-attention's mask, or None.
  """

  self_mask: masks.Mask
  positions: Array | None = None
  bias: Array | None = None
  encoded: Array | None = None
  cross_mask: masks.Mask | None = None


class EncoderLayer(nn.Module):
  """Self-attention and feed-forward, each wrapped in residual + LayerNorm. Scan body."""

  cfg: ModelConfig
  rotate_fn: Callable[[Array, Array, str], Array] | None = None
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, ctx: Context):
    cfg, det = self.cfg, self.deterministic
    attn = _attention(cfg, "self_attention", self.rotate_fn)
    x = _residual(cfg, x, lambda y: attn(y, y, ctx.self_mask, bias=ctx.bias,
                                         positions=ctx.positions, deterministic=det),
                  _norm(cfg, "norm_attention"), det)
    x = _ffn_residual(cfg, self, x, det)
    return x, None  # [B, S, D]


class DecoderLayer(nn.Module):
  """Causal self-attention (KV-cached in decode mode), optional cross-attention, feed-forward."""

  cfg: ModelConfig
  has_cross: bool = True
  rotate_fn: Callable[[Array, Array, str], Array] | None = None
  deterministic: bool = True
  prime: bool = False  # Only fill the cross-attention cache from ctx.encoded (decoding).

  @nn.compact
  def __call__(self, x: Array, ctx: Context):
    cfg, det = self.cfg, self.deterministic
    if self.prime:
      _attention(cfg, "cross_attention")(x, ctx.encoded, cross_cache="fill")
      return x, None
    attn = _attention(cfg, "self_attention", self.rotate_fn)
    x = _residual(cfg, x, lambda y: attn(y, y, ctx.self_mask, bias=ctx.bias,
                                         positions=ctx.positions, deterministic=det),
                  _norm(cfg, "norm_attention"), det)
    if self.has_cross:
      cross = _attention(cfg, "cross_attention")
      cache = "read" if ctx.cross_mask.decoding else None
      x = _residual(cfg, x, lambda y: cross(y, ctx.encoded, ctx.cross_mask, deterministic=det,
                                            cross_cache=cache),
                    _norm(cfg, "norm_cross"), det)
    x = _ffn_residual(cfg, self, x, det)
    return x, None  # [B, T, D]


def _stack(layer_cls: type[nn.Module], cfg: ModelConfig, num_layers: int):
  """`layer_cls` rematerialised per cfg.remat and scanned `num_layers` times."""
  if cfg.remat not in ("none", *_FFN_POLICIES):
    # In a loop XLA cannot merge the recomputation into the forward pass; unrolled (only the
    # compile tool's cost-model compile does that with remat) it needs jax's barrier.
    layer_cls = nn.remat(layer_cls, prevent_cse=cfg.scan_unroll > 1,
                         policy=_REMAT_POLICIES[cfg.remat])
  return nn.scan(
      layer_cls,
      variable_axes={"params": 0, "cache": 0, "intermediates": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,),  # The Context.
      length=num_layers,
      unroll=min(cfg.scan_unroll, max(num_layers, 1)),
      metadata_params={nn.PARTITION_NAME: LAYERS},
  )


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


def default_positions(tokens: Array, start: Array | int = 0) -> Array:
  return jnp.broadcast_to(start + jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def _bias(pe: positional.PositionalEncoding, q_positions: Array, k_positions: Array):
  """A BIAS encoding's [B, N, T, S] logit bias, computed once per stack (None for the others)."""
  return pe.bias(q_positions, k_positions) if positional.BIAS in pe.HOOKS else None


def _rotate(pe: positional.PositionalEncoding):
  return pe.rotate_fn() if positional.ROTATE in pe.HOOKS else None


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
    ctx = Context(self_mask=masks.Mask(segments, segments), positions=positions,
                  bias=_bias(pe, positions, positions))
    stack = _stack(EncoderLayer, cfg, cfg.num_encoder_layers)
    x, _ = stack(cfg, _rotate(pe), deterministic, name="layers")(x, ctx)
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
  def __call__(self, tokens: Array | None, encoded: Array | None, enc_segments: Array | None,
               positions: Array | None, segments: Array | None, deterministic: bool,
               decode: bool, return_hidden: bool = False, prime: bool = False) -> Array | None:
    cfg = self.cfg
    if prime:  # Cross-attention keys and values of `encoded` into the cache, once per sequence.
      self._layers(None, True, prime=True)(encoded[:, :1], Context(masks.Mask(), encoded=encoded))
      return None
    if decode:
      positions, key_positions, self_mask = self._cache_slots(tokens, positions)
    else:
      positions = default_positions(tokens) if positions is None else positions
      positions = _train_positions(self, cfg, tokens, positions, deterministic)  # [B, T]
      key_positions, self_mask = positions, masks.Mask(segments, segments, causal=True)
    pe = _posemb(cfg, bidirectional=False)
    x = _embed_tokens(cfg, self.embed, pe, tokens, positions, deterministic)  # [B, T, D]
    ctx = Context(self_mask=self_mask, positions=positions,
                  bias=_bias(pe, positions, key_positions), encoded=encoded,
                  # Packed rows: queries see their own source segment.
                  cross_mask=masks.Mask(None if decode else segments, enc_segments,
                                        decoding=decode) if self.has_cross else None)
    x, _ = self._layers(_rotate(pe), deterministic)(x, ctx)
    if cfg.norm == "pre":
      x = _norm(cfg, "final_norm")(x)
    if return_hidden:  # [B, T, D], for a loss that projects chunk by chunk (`project`).
      return x
    return self.project(x)  # [B, T, V]

  def _layers(self, rotate_fn, deterministic: bool, prime: bool = False) -> nn.Module:
    stack = _stack(DecoderLayer, self.cfg, self.cfg.num_decoder_layers)
    return stack(self.cfg, self.has_cross, rotate_fn, deterministic, prime, name="layers")

  def _cache_slots(self, tokens: Array, positions: Array | None):
    """Decode mode: the new tokens' positions [B, T], every cache slot's position [B, L] and the
    self-attention mask over the cache; advances the cache index."""
    batch, length = tokens.shape
    initialized = self.has_variable("cache", "index")
    index = self.variable("cache", "index", jnp.zeros, (), jnp.int32)
    slot_pos = self.variable("cache", "positions", jnp.zeros, (batch, length), jnp.int32)
    cache_index = index.value
    if positions is None:
      positions = default_positions(tokens, cache_index)
    if initialized:
      slot_pos.value = jax.lax.dynamic_update_slice(slot_pos.value, positions, (0, cache_index))
      index.value = cache_index + length
    mask = masks.Mask(causal=True, cache_index=cache_index, decoding=True)
    return positions, slot_pos.value, mask

  def project(self, x: Array) -> Array:
    """Final hidden states [..., D] -> vocabulary logits [..., V] (model.logits_dtype)."""
    cfg = self.cfg
    if cfg.tie_output:
      return layers.tied_logits(x.astype(cfg.dtype), self.embed.embedding, cfg.fused_output,
                                cfg.logits_dtype)
    return self.logits(x.astype(cfg.dtype)).astype(cfg.logits_dtype)  # [..., V]

  def output_weights(self) -> tuple[Array, Array | None]:
    """`project` as weights, for a loss that multiplies them itself: (table [V, D] in the
    compute dtype, bias [V] or None), logits = x @ table^T + bias."""
    cfg = self.cfg
    if cfg.tie_output:
      return self.embed.embedding.astype(cfg.dtype), None
    params = self.logits.variables["params"]
    return params["kernel"].astype(cfg.dtype).T, params["bias"]
