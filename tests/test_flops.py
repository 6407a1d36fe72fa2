"""Model FLOPs (xformer/targets/flops.py), the numerator of every MFU we report.

Checked two independent ways: against the arithmetic of one configuration written out here, and
against XLA's own count of the model's forward pass on CPU (HLO cost analysis), which knows
nothing of our formula. A miscounted layer, a dropped cross-attention or a forgotten gated FFN
half fails one or both.
"""

import jax
import jax.numpy as jnp
import pytest

from xformer import model as model_lib
from xformer.model import config as model_config
from xformer.targets import flops


def _cfg(**kw):
  base = dict(vocab_size=512, d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=2,
              num_decoder_layers=3, max_len=64, posemb="sinusoidal",
              scan_unroll=3)  # Every layer in straight-line code: a loop body counts once.
  return model_config.variant("tiny", **{**base, **kw})


def test_translation_forward_by_hand():
  # D 256, A 4 x 64 = 256, F 1024, V 512, S 40 source and T 24 target positions.
  enc_layer = 8 * 40 * 256 * 256 + 4 * 40 * 40 * 256 + 2 * 40 * (256 * 1024 * 2)
  dec_self = 8 * 24 * 256 * 256 + 4 * 24 * 24 * 256 // 2  # Causal: half the scores.
  dec_cross = 2 * 24 * 256 * 256 * 2 + 4 * 40 * 256 * 256 + 4 * 24 * 40 * 256
  dec_layer = dec_self + dec_cross + 2 * 24 * (256 * 1024 * 2)
  expected = 2 * enc_layer + 3 * dec_layer + 2 * 24 * 256 * 512
  assert flops.forward_flops(_cfg(), 40, 24) == expected
  assert flops.train_step_flops(_cfg(), 8, 40, 24) == 3 * 8 * expected
  # A gated FFN has two input projections: 2 T (2 D F + F D) per layer instead of 2 T (2 D F).
  gated = flops.forward_flops(_cfg(activation="swiglu"), 40, 24)
  assert gated - expected == (2 * 40 + 3 * 24) * 2 * 256 * 1024


def _xla_forward_flops(model, *inputs):
  params = model_lib.init_params(model, jax.random.key(0))
  lowered = jax.jit(lambda p, *x: model.apply({"params": p}, *x)).lower(params, *inputs)
  counted = flops.lowered_flops(lowered)
  if counted is None:
    pytest.skip("this jax build exposes no HLO cost analysis")
  return counted


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
def test_translation_forward_matches_xla_count(activation):
  """XLA computes the whole causal score matrix (masked, not skipped) and counts norms, softmax
  and activations too: the formula plus the masked half of the decoder's scores, within 4%."""
  cfg = _cfg(activation=activation)
  model = model_lib.Transformer(cfg)
  src, tgt = jnp.ones((2, 40), jnp.int32), jnp.ones((2, 24), jnp.int32)
  counted = _xla_forward_flops(model, src, tgt)
  masked_half = cfg.num_decoder_layers * 4 * 24 * 24 * 256 / 2
  expected = 2 * (flops.forward_flops(cfg, 40, 24) + masked_half)
  assert abs(counted / expected - 1) < 0.04, (counted, expected)


def test_lm_forward_matches_xla_count():
  cfg = _cfg(num_encoder_layers=0)
  model = model_lib.DecoderOnlyLM(cfg)
  counted = _xla_forward_flops(model, jnp.ones((2, 64), jnp.int32))
  masked_half = cfg.num_decoder_layers * 4 * 64 * 64 * 256 / 2
  expected = 2 * (flops.forward_flops(cfg, 0, 64) + masked_half)
  assert abs(counted / expected - 1) < 0.04, (counted, expected)
