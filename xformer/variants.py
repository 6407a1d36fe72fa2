"""Model hyper-parameters (`ModelConfig`) and the size table (`tiny`, `small`, `base`, `big`).

`ModelConfig` is frozen and validated on construction, so a bad value (an unknown positional
encoding, heads that do not divide d_model) fails before anything is traced or compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from xformer import layers, positional

NORMS = ("post", "pre")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = (None, "xla", "xla_lengths", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes a model's parameters and computation.

  Attributes:
    vocab_size: target (and, when shared, source) vocabulary size V.
    src_vocab_size: source vocabulary when `share_embeddings` is False (defaults to vocab_size).
    d_model: width D. num_heads: N. head_dim: H (default D // N). d_ff: feed-forward width F.
    num_encoder_layers / num_decoder_layers: stack depths (the encoder is unused by the LM).
    dropout: residual and embedding dropout (the paper's P_drop).
    attention_dropout: dropout on attention weights. ffn_dropout: on the feed-forward hidden layer.
    activation: feed-forward activation, a key of `layers.ACTIVATIONS`.
    norm: "post" (the paper: x = LN(x + f(x))) or "pre" (x = x + f(LN(x)), final LN).
    posemb: registered positional encoding name; posemb_kw: its keyword arguments.
    max_len: longest sequence the model is built for (size of learned position tables).
    share_embeddings: one embedding table for source and target (the paper).
    tie_output: output projection = target embedding transposed (the paper).
    dtype: compute dtype name; param_dtype: parameter dtype name.
    remat: per-layer rematerialisation policy, one of REMAT_POLICIES.
    scan_unroll: layers per iteration of the compiled layer loop. 1 compiles one layer (fastest
      compile, least memory); a value >= the depth unrolls the stack completely (no loop: 9-20%
      faster steps on CPU, but slower compiles and ~30% more activation memory, and remat must
      be "none"). Parameters are stacked the same way whatever the value, so a checkpoint loads
      under any setting.
    attention_impl: None / "xla": XLA attention with dense masks (packing works); "cudnn":
      cuDNN's fused kernel (GPU, bf16/fp16), masks given as causal flag + sequence lengths, so
      rows must be unpacked; "xla_lengths": XLA with those same arguments (CPU tests, debugging).
    layer_norm_eps: LayerNorm epsilon.
  """

  vocab_size: int = 32_000
  src_vocab_size: int | None = None
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
  share_embeddings: bool = True
  tie_output: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_unroll: int = 1
  attention_impl: str | None = None
  layer_norm_eps: float = 1e-6

  def __post_init__(self):
    # Frozen but hashable: store the kwargs as a sorted tuple of items.
    object.__setattr__(self, "posemb_kw", tuple(sorted(dict(self.posemb_kw).items())))
    positional.validate(self.posemb, dict(self.posemb_kw))
    _check_choice("activation", self.activation, sorted(layers.ACTIVATIONS))
    _check_choice("norm", self.norm, NORMS)
    _check_choice("remat", self.remat, REMAT_POLICIES)
    _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not a dtype name.") from e
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                       "set head_dim explicitly or change one of them.")
    if isinstance(self.scan_unroll, bool) or self.scan_unroll < 1:
      raise ValueError(f"model.scan_unroll must be an int >= 1, got {self.scan_unroll!r}.")
    if self.scan_unroll > 1 and self.remat != "none":
      # Measured (benchmarks/memory.py, 6+6 d512 T512): full remat 1062 MiB in the loop, 6750
      # MiB unrolled; without a loop XLA schedules the recomputation early, keeping everything.
      raise ValueError(f"model.remat={self.remat!r} needs the layer loop: set scan_unroll=1 "
                       f"(got {self.scan_unroll}); unrolled layers keep their activations anyway.")
    for name in ("dropout", "attention_dropout", "ffn_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}.")

  @property
  def heads_dim(self) -> int:
    """H, the per-head width."""
    return self.head_dim or self.d_model // self.num_heads

  @property
  def source_vocab_size(self) -> int:
    return self.vocab_size if self.share_embeddings else (self.src_vocab_size or self.vocab_size)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def _check_choice(name: str, value: Any, valid) -> None:
  if value not in valid:
    raise ValueError(f"model.{name}={value!r} is not valid; choose one of {list(valid)}.")


# Paper Table 3 for base/big; tiny and small are ours, sized for tests and CPU runs.
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, num_heads=4, d_ff=256, num_encoder_layers=2, num_decoder_layers=2,
                 dropout=0.1),
    "small": dict(d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=3,
                  num_decoder_layers=3, dropout=0.1),
    "base": dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6,
                 dropout=0.1),
    "big": dict(d_model=1024, num_heads=16, d_ff=4096, num_encoder_layers=6,
                num_decoder_layers=6, dropout=0.3),
}


def variant(name: str, **overrides: Any) -> ModelConfig:
  """The `ModelConfig` of a named size, with `overrides` on top (e.g. vocab_size, posemb)."""
  if name not in VARIANTS:
    raise KeyError(f"Unknown model variant {name!r}; valid: {', '.join(VARIANTS)}.")
  return ModelConfig(**{**VARIANTS[name], **overrides})
