"""Model FLOPs of one training step, written out (MFU in benchmarks and xformer.compile).

Per token, a matmul with a [D_in, D_out] weight costs 2 * D_in * D_out FLOPs forward; backward
costs twice the forward, so training = 3 x forward (the "6 N" rule). Embedding lookups are
free; the output projection (tied or not) is a [D, V] matmul. Norms, softmax, activations and
the optimizer are not counted (they are < 2% here and are not matmuls).

Encoder-decoder, per sequence pair with S source and T target slots (D model width, F FFN width,
F_in = 2 F for gated FFNs (swiglu/geglu) else F, A = heads x head_dim attention width):
  encoder layer
    projections   2 S (D A [q] + 2 D A [k, v] + A D [o])             = 8 S D A
    scores+values 2 S S A (QK^T) + 2 S S A (PV)                      = 4 S^2 A
    FFN           2 S (D F_in + F D)
  decoder layer
    self-attn     8 T D A  +  4 T^2 A / 2 (causal: half the score matrix is masked)
    cross-attn    2 T D A [q] + 2 T A D [o] + 4 S D A [k, v of the source] + 4 T S A
    FFN           2 T (D F_in + F D)
  output          2 T D V
Decoder-only LM: the decoder without cross-attention, T tokens per row (S = 0: no encoder).

Attention is counted on all slots, as computed: packed rows attend over the whole row (the
segment mask zeroes other examples' weights, it does not skip their FLOPs).
"""

from __future__ import annotations

from typing import Any

import jax

from xformer.model.config import ModelConfig


def _ffn(cfg: ModelConfig, tokens: int) -> float:
  gated = cfg.activation in ("swiglu", "geglu")
  return 2.0 * tokens * (cfg.d_model * cfg.d_ff * (2 if gated else 1) + cfg.d_ff * cfg.d_model)


def forward_flops(cfg: ModelConfig, src_len: int, tgt_len: int) -> float:
  """Forward FLOPs of one row: a source/target pair, or (src_len 0) one LM sequence."""
  d, a, s, t = cfg.d_model, cfg.num_heads * cfg.head_dim, src_len, tgt_len
  decoder_layer = 8 * t * d * a + 4 * t * t * a / 2 + _ffn(cfg, t)
  flops = cfg.num_decoder_layers * decoder_layer + 2.0 * t * d * cfg.vocab_size
  if src_len:
    encoder_layer = 8 * s * d * a + 4 * s * s * a + _ffn(cfg, s)
    cross = 4 * t * d * a + 4 * s * d * a + 4 * t * s * a
    flops += cfg.num_encoder_layers * encoder_layer + cfg.num_decoder_layers * cross
  return float(flops)


def train_step_flops(cfg: ModelConfig, batch: int, src_len: int, tgt_len: int) -> float:
  """Forward + backward FLOPs of a train step on a [batch] of rows: 3 x forward."""
  return 3.0 * batch * forward_flops(cfg, src_len, tgt_len)


def lowered_flops(lowered: Any) -> float | None:
  """FLOPs of a lowered (not yet compiled) jitted step, all devices: XLA's HLO cost analysis of
  the module before partitioning and backend passes. For GPU targets, whose compiled
  executables carry no cost analysis. Kernel custom calls (cuDNN fused attention, Pallas) count
  zero; None when this jax build does not expose the analysis."""
  try:
    from jax._src.lib import xla_client  # pylint: disable=import-outside-toplevel
    module = lowered.compiler_ir("hlo").get_hlo_module()
    cost = xla_client._xla.hlo_module_cost_analysis(  # pylint: disable=protected-access
        jax.devices("cpu")[0].client, module)
  except (AttributeError, TypeError, RuntimeError):
    return None
  return float(cost["flops"]) if cost.get("flops") else None
