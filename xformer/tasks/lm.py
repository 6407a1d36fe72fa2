"""Decoder-only language modelling.

Batch: targets_in (BOS + text), targets (text + EOS), targets_segment_ids, targets_positions
[B, T]. Evaluation is loss and perplexity (the evaluate CLI adds the length-generalisation
table); the notebook verb is `generate`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from xformer import errors
from xformer.data.tokenizer import BOS_ID, EOS_ID
from xformer.evaluation import extrapolation
from xformer.model import DecoderOnlyLM, decode
from xformer.tasks import base
from xformer.tasks.base import register


@register("lm")
class LanguageModel(base.Task):
  """Next-token prediction over texts with a causal decoder."""

  name = "lm"
  data_kind = "lm"
  default_dataset = "xformer_pydoc"

  def build_model(self, cfg) -> DecoderOnlyLM:
    return DecoderOnlyLM(cfg)

  def apply(self, model, params, batch, *, deterministic=True, rng=None, **kwargs):
    return model.apply({"params": params}, batch["targets_in"],
                       positions=batch["targets_positions"],
                       segments=batch["targets_segment_ids"], deterministic=deterministic,
                       rngs=None if rng is None else {"dropout": rng}, **kwargs)

  def decode_step(self, model, params, cache, tokens, *context):
    del context  # An LM step reads only its cache.
    logits, state = model.apply({"params": params, "cache": cache}, tokens, decode=True,
                                mutable=["cache"])
    return logits[:, -1], state["cache"]  # [B, V]

  def features(self, ids, lengths, fit):
    tokens = fit(ids[0], lengths.target - 1)  # Room for BOS / EOS.
    if tokens is None:
      return None
    bos, eos = np.array([BOS_ID], np.int32), np.array([EOS_ID], np.int32)
    return {"targets_in": np.concatenate([bos, tokens]),
            "targets": np.concatenate([tokens, eos])}

  def feature_lengths(self, lengths):
    return {"targets_in": lengths.target, "targets": lengths.target}

  def longest_position(self, data, decode_settings) -> int:
    del decode_settings  # Sampling lengths are chosen at call time and checked there.
    return data.max_target_len

  # --- Evaluation --------------------------------------------------------------------------

  def eval_metrics(self, ctx, params, split, limit, *, num_samples=0, thorough=False):
    """With `thorough`: perplexity of windows of 1x-8x the training length (n/a: NaN, past a
    learned table), see xformer.extrapolation."""
    del num_samples
    if not thorough:
      return {}
    texts = [t for (t,) in ctx.inputs.dataset.examples(split)][:limit or None]
    tokens = [ids + [EOS_ID] for ids in ctx.inputs.tokenizer.encode_batch(texts)]
    logits = jax.jit(lambda p, rows: ctx.run.model.apply({"params": p}, rows))
    report = extrapolation.lm_report(
        lambda rows: logits(params, rows), tokens, train_len=ctx.inputs.lengths.target,
        limit=ctx.run.position_limit(), bos=BOS_ID)
    return {f"{split}/ppl@{k}x": float("nan") if v is None else v
            for k, v in report["ppl"].items()}

  # --- Notebook verbs ------------------------------------------------------------------------

  def score_examples(self, tokenizer, sources: Sequence[str], targets: Sequence[str] | None):
    if targets is not None:
      raise errors.ConfigError("A language model scores texts alone: score(texts).")
    return [(tokenizer.encode(t),) for t in sources]

  def attention_maps(self, intermediates, batch, pieces) -> dict[str, Any]:
    n = int(batch["targets_segment_ids"][0].sum())
    return {"target_pieces": pieces(batch["targets_in"][0, :n]),
            "decoder_self": base.layer_weights(
                intermediates["decoder"]["layers"]["self_attention"])[:, :, :n, :n]}

  def generate(self, bundle, prompts, *, max_len=128, temperature=1.0, top_k=0, top_p=1.0,
               seed=0):
    limit = bundle.run.position_limit()
    max_len = max_len if limit is None else min(max_len, limit)
    rows, lengths = bundle.rows([[BOS_ID] + bundle.tokenizer.encode(p) for p in prompts])
    if max(lengths) >= max_len:
      raise errors.ConfigError(f"A prompt of {max(lengths)} tokens leaves no room within "
                               f"max_len={max_len}.")
    rows = rows[:, :min(rows.shape[1], max_len)]
    lengths = np.asarray(lengths + [1] * (len(rows) - len(lengths)), np.int32)
    out = decode.sample_lm(bundle.run.model, bundle.params, rows, lengths, jax.random.key(seed),
                           max_len, temperature, top_k, top_p)
    out = np.asarray(out)
    return [bundle.tokenizer.decode(out[r, n:]) for r, n in enumerate(lengths[:len(prompts)])]
