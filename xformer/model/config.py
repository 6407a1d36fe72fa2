"""Model hyper-parameters (`ModelConfig`) and the size table (`VARIANTS`).

`ModelConfig` is frozen and validated on construction, so a bad value (an unknown positional
encoding, heads that do not divide d_model) fails before anything is traced or compiled.
A config file names a size (`model.variant`); the size fields of config.model stay None unless
a flag sets them, so `--config.model.variant=big` and `--config.model.d_model=768` both work.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from xformer import errors, positional
from xformer.model import activations

NORMS = ("post", "pre")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "minimal", "ffn", "ffn_act")
ATTENTION_IMPLS = ("xla", "xla_lengths", "cudnn", "splash", "auto")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes a model's parameters and computation.

  Attributes:
    vocab_size: vocabulary size V (one tokenizer serves source and target).
    d_model: width D. num_heads: N. head_dim: H (None: D // N, resolved on construction).
    d_ff: feed-forward width F.
    num_encoder_layers / num_decoder_layers: stack depths (a decoder-only LM has no encoder).
    dropout: residual and embedding dropout (the paper's P_drop).
    attention_dropout: dropout on attention weights. ffn_dropout: on the feed-forward hidden layer.
    activation: feed-forward activation, a key of `activations.ACTIVATIONS`.
    norm: "post" (the paper: x = LN(x + f(x))) or "pre" (x = x + f(LN(x)), final LN).
    posemb: registered positional encoding name; posemb_kw: its keyword arguments.
    max_len: longest sequence the model is built for (size of learned position tables).
    random_positions: M > 0 trains with randomized positions (Ruoss et al. 2023): each training
      sequence of k tokens gets a random sorted subset of [0, M) as its positions
      (xformer/positional/random_positions.py); evaluation and decoding use 0..k-1. 0: off.
    share_embeddings: one embedding table for source and target (the paper).
    tie_output: output projection = target embedding transposed (the paper).
    fused_output: the tied output projection with its backward pass written out
      (`layers.tied_logits_fused`); False is plain autodiff of the same product. Same numbers.
    dtype: compute dtype; param_dtype: parameter dtype (names or jnp dtypes; stored as dtypes).
    logits_dtype: dtype of the output logits (float32 accumulation either way; the loss and
      decoding compute in float32 from them). "bfloat16" halves the largest activation of a
      large-vocabulary step.
    remat: per-layer rematerialisation policy, one of REMAT_POLICIES: "full" keeps only the
      layer's input, "dots"/"dots_no_batch" the matmul outputs (without batch dims: not the
      attention's), "minimal" those and the fused attention's output and statistics (splash,
      attention_chunk > 0); "ffn" everything but the feed-forward's hidden layer (recomputed
      from the block's input: one more matmul per layer, two gated; with pre-LN its norm's
      output too); "ffn_act" everything but the activation's output (recomputed from the
      saved pre-activation: no matmul; it saves nothing with relu, whose gradient is taken
      from its output).
    scan_unroll: layers per iteration of the compiled layer loop. 1 compiles one layer (fastest
      compile, least memory); a value >= the depth unrolls the stack (no loop: faster steps on
      CPU, slower compiles and more activation memory; remat must then be "none"). Parameters
      are stacked the same way whatever the value, so a checkpoint loads under any setting.
    attention_impl: "xla": XLA attention with dense masks (packing works); "cudnn": cuDNN's
      fused kernel (GPU, bf16/fp16), masks given as causal flag + sequence lengths, so rows must
      be unpacked; "xla_lengths": XLA with those same arguments (CPU tests, debugging);
      "splash": the Pallas TPU kernel (xformer/model/splash.py; packed rows via segment ids, no logit
      bias, row lengths multiples of 128); "auto": splash on TPU where it applies, else "xla"
      (resolved by `xformer.run.Run`, which logs the choice).
    attention_chunk: > 0: XLA attention ("xla") in query chunks of this many tokens with
      FlashAttention's backward pass (xformer/model/flash_xla.py): no [T, S] probabilities are
      kept for the backward pass, and a causal chunk reads only the keys before its end (about
      half the logits of a long sequence are never formed). 0: the whole [T, S] at once.
    fused_qkv: splash attention: self-attention's q, k and v from one product with the stacked
      weights (True) or three (False); by measurement (benchmarks/README.md): one for wmt_base
      (T=256), three for the 100M LM at T=2048. The parameters do not change.
    layer_norm_eps: LayerNorm epsilon.
  """

  vocab_size: int = 32_000
  d_model: int = 512
  num_heads: int = 8
  head_dim: int | None = None
  d_ff: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dropout: float = 0.1
  attention_dropout: float = 0.0
  ffn_dropout: float = 0.0
  activation: str = "relu"
  norm: str = "post"
  posemb: str = "sinusoidal"
  posemb_kw: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  max_len: int = 256
  random_positions: int = 0
  share_embeddings: bool = True
  tie_output: bool = True
  fused_output: bool = True
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  logits_dtype: Any = "float32"
  remat: str = "none"
  scan_unroll: int = 1
  attention_impl: str = "xla"
  attention_chunk: int = 0
  fused_qkv: bool = True
  layer_norm_eps: float = 1e-6

  def __post_init__(self):
    # Frozen but hashable (a static argument of jitted functions): kwargs as sorted items.
    object.__setattr__(self, "posemb_kw", tuple(sorted(dict(self.posemb_kw).items())))
    positional.validate(self.posemb, dict(self.posemb_kw))
    errors.check_choice("model.activation", self.activation, sorted(activations.ACTIVATIONS))
    errors.check_choice("model.norm", self.norm, NORMS)
    errors.check_choice("model.remat", self.remat, REMAT_POLICIES)
    errors.check_choice("model.attention_impl", self.attention_impl, ATTENTION_IMPLS)
    for name in ("dtype", "param_dtype", "logits_dtype"):
      try:
        object.__setattr__(self, name, jnp.dtype(getattr(self, name)))
      except TypeError as e:
        raise errors.ConfigError(
            f"model.{name}={getattr(self, name)!r} is not a dtype name.") from e
    if self.head_dim is None:
      if self.d_model % self.num_heads:
        raise errors.ConfigError(
            f"model.d_model={self.d_model} is not divisible by model.num_heads="
            f"{self.num_heads}; set model.head_dim explicitly or change one of them.")
      object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
    if isinstance(self.attention_chunk, bool) or self.attention_chunk < 0:
      raise errors.ConfigError(
          f"model.attention_chunk must be an int >= 0, got {self.attention_chunk!r}.")
    if isinstance(self.scan_unroll, bool) or self.scan_unroll < 1:
      raise errors.ConfigError(f"model.scan_unroll must be an int >= 1, got {self.scan_unroll!r}.")
    if self.scan_unroll > 1 and self.remat != "none":
      # benchmarks/README.md: without a layer loop XLA schedules the recomputation early and
      # keeps every activation anyway.
      raise errors.ConfigError(
          f"model.remat={self.remat!r} needs the layer loop: set model.scan_unroll=1 (got "
          f"{self.scan_unroll}); unrolled layers keep their activations anyway.")
    self._check_random_positions()
    for name in ("dropout", "attention_dropout", "ffn_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise errors.ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}.")

  def _check_random_positions(self) -> None:
    m = self.random_positions
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
      raise errors.ConfigError(f"model.random_positions must be an int >= 0, got {m!r}.")
    if m and not positional.get(self.posemb).HOOKS:
      raise errors.ConfigError(f"model.random_positions={m} with model.posemb={self.posemb!r}, "
                               "which reads no positions: set one of them differently.")
    if m > self.max_len and positional.get(self.posemb).LIMITED_TO_MAX_LEN:
      raise errors.ConfigError(
          f"model.random_positions={m} draws positions past model.max_len={self.max_len}, the "
          f"end of the {self.posemb!r} table: raise model.max_len to {m}.")

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


# The size fields a variant sets; config.model leaves them None unless overridden.
SIZE_FIELDS = ("d_model", "num_heads", "d_ff", "num_encoder_layers", "num_decoder_layers",
               "dropout")

# Paper Table 3 for base/big; the others are ours: tiny for tests, mini/small for CPU runs,
# lm_* for decoder-only LMs (no encoder; lm_100m is GPT-2 small's shape).
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, num_heads=4, d_ff=256, num_encoder_layers=2, num_decoder_layers=2,
                 dropout=0.1),
    "mini": dict(d_model=128, num_heads=4, d_ff=256, num_encoder_layers=3,
                 num_decoder_layers=3, dropout=0.1),
    "small": dict(d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=3,
                  num_decoder_layers=3, dropout=0.1),
    "base": dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6,
                 dropout=0.1),
    "big": dict(d_model=1024, num_heads=16, d_ff=4096, num_encoder_layers=6,
                num_decoder_layers=6, dropout=0.3),
    "lm_mini": dict(d_model=128, num_heads=4, d_ff=512, num_encoder_layers=0,
                    num_decoder_layers=4, dropout=0.1),
    "lm_base": dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=0,
                    num_decoder_layers=12, dropout=0.0),
    "lm_100m": dict(d_model=768, num_heads=12, d_ff=3072, num_encoder_layers=0,
                    num_decoder_layers=12, dropout=0.0),
}
assert all(set(v) == set(SIZE_FIELDS) for v in VARIANTS.values())


def variant(name: str, **overrides: Any) -> ModelConfig:
  """The `ModelConfig` of a named size, with `overrides` on top (e.g. vocab_size, posemb)."""
  errors.check_choice("model.variant", name, list(VARIANTS))
  return ModelConfig(**{**VARIANTS[name], **overrides})
