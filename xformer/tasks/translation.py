"""Translation with the encoder-decoder Transformer (the paper's task).

Batch: inputs, inputs_segment_ids, inputs_positions [B, S]; targets_in (BOS + target), targets
(target + EOS), targets_segment_ids, targets_positions [B, T]. Evaluation adds BLEU of decoded
(greedy or beam) translations; the notebook verb is `translate`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xformer import errors
from xformer.data.tokenizer import BOS_ID, EOS_ID
from xformer.evaluation import bleu
from xformer.model import Transformer, decode, masks
from xformer.runtime.metric_writer import log_line
from xformer.tasks import base
from xformer.tasks.base import register


@register("translation")
class Translation(base.Task):
  """Source -> target with the encoder-decoder model."""

  name = "translation"
  data_kind = "translation"
  default_dataset = "xformer_translation"

  def check(self, cfg) -> None:
    if cfg.num_encoder_layers < 1:
      raise errors.ConfigError(f"The translation task needs an encoder; model.num_encoder_layers="
                               f"{cfg.num_encoder_layers} (variant lm_* sizes are for task=lm).")

  def build_model(self, cfg) -> Transformer:
    return Transformer(cfg)

  def apply(self, model, params, batch, *, deterministic=True, rng=None, **kwargs):
    return model.apply({"params": params}, batch["inputs"], batch["targets_in"],
                       src_positions=batch["inputs_positions"],
                       tgt_positions=batch["targets_positions"],
                       src_segments=batch["inputs_segment_ids"],
                       tgt_segments=batch["targets_segment_ids"], deterministic=deterministic,
                       rngs=None if rng is None else {"dropout": rng}, **kwargs)

  def decode_context(self, cfg, rows, source_len):
    # The encoder output [B, S, D] and the source segment ids [B, S].
    return (jax.ShapeDtypeStruct((rows, source_len, cfg.d_model), cfg.dtype),
            jax.ShapeDtypeStruct((rows, source_len), jnp.int32))

  def decode_context_of(self, model, params, batch):
    src = batch["inputs"]  # [B, S], one source per row (0-padded).
    return (model.apply({"params": params}, src, method="encode"),
            masks.segments_from_tokens(src))

  def decode_cache(self, model, params, rows, max_len, *context):
    return decode.translation_cache(model, params, context[0], max_len)  # Cross K/V filled.

  def decode_step(self, model, params, cache, tokens, *context):
    encoded, src_segments = context
    return decode.translation_step(model, params, encoded, src_segments)(cache, tokens)

  def features(self, ids, lengths, fit):
    src = fit(ids[0], lengths.source - 1)  # Room for EOS.
    tgt = fit(ids[1], lengths.target - 1)  # Room for BOS / EOS.
    if src is None or tgt is None:
      return None
    bos, eos = np.array([BOS_ID], np.int32), np.array([EOS_ID], np.int32)
    return {"inputs": np.concatenate([src, eos]), "targets_in": np.concatenate([bos, tgt]),
            "targets": np.concatenate([tgt, eos])}

  def feature_lengths(self, lengths):
    return {"inputs": lengths.source, "targets_in": lengths.target, "targets": lengths.target}

  def longest_position(self, data, decode) -> int:
    # Decoding writes up to max_source_len + max_extra output positions.
    return max(data.max_source_len, data.max_target_len, data.max_source_len + decode.max_extra)

  # --- Evaluation --------------------------------------------------------------------------

  def eval_metrics(self, ctx, params, split, limit, *, num_samples=0, thorough=False):
    del thorough  # BLEU is all there is.
    srcs, hyps, refs = self.translate_split(ctx, params, split, limit)
    scores = bleu.bleu_scores(hyps, refs, lang=ctx.inputs.target_lang,
                                  pretokenized=ctx.inputs.dataset.pretokenized)
    for s, h, r in list(zip(srcs, hyps, refs))[:num_samples]:
      log_line(f"  source:     {_clip(s)}\n  reference:  {_clip(r)}\n  hypothesis: {_clip(h)}")
    return {f"{split}/{k}": v for k, v in scores.items() if isinstance(v, float)}

  def translate_split(self, ctx, params, split: str, limit: int | None
                      ) -> tuple[list[str], list[str], list[str]]:
    """(sources, hypotheses, references) of a split's first `limit` examples (all: None).

    Over-long sources are truncated: every example is translated and scored.
    """
    encoded, dataset = ctx.inputs.encoded(split), ctx.inputs.dataset
    n = len(encoded) if not limit else min(limit, len(encoded))
    length = ctx.inputs.lengths.source
    srcs, hyps, refs = [], [], []
    for start in range(0, n, ctx.batch_size):
      indices = range(start, min(start + ctx.batch_size, n))
      rows = np.zeros((ctx.batch_size, length), np.int32)  # Fixed shape: one compile.
      for r, i in enumerate(indices):
        ids = np.concatenate([encoded[i][0][:length - 1], [EOS_ID]])
        rows[r, :len(ids)] = ids
      tokens, _ = ctx.run.translate(params, rows, ctx.decode)  # [B, K, L]
      for r, i in enumerate(indices):
        src, ref = dataset.example(split, i)
        srcs.append(src)
        refs.append(ref)
        hyps.append(ctx.inputs.tokenizer.decode(tokens[r, 0]))
    return srcs, hyps, refs

  # --- Notebook verbs ------------------------------------------------------------------------

  def score_examples(self, tokenizer, sources: Sequence[str], targets: Sequence[str] | None):
    if targets is None or len(targets) != len(sources):
      raise errors.ConfigError("Translation scoring needs one target per source: "
                               "score(sources, targets).")
    return [(tokenizer.encode(s), tokenizer.encode(t)) for s, t in zip(sources, targets)]

  def attention_maps(self, intermediates, batch, pieces) -> dict[str, Any]:
    n_src = int(batch["inputs_segment_ids"][0].sum())
    n_tgt = int(batch["targets_segment_ids"][0].sum())
    dec = intermediates["decoder"]["layers"]
    return {"source_pieces": pieces(batch["inputs"][0, :n_src]),
            "target_pieces": pieces(batch["targets_in"][0, :n_tgt]),
            "encoder_self": base.layer_weights(
                intermediates["encoder"]["layers"]["self_attention"])[:, :, :n_src, :n_src],
            "decoder_self": base.layer_weights(dec["self_attention"])[:, :, :n_tgt, :n_tgt],
            "cross": base.layer_weights(dec["cross_attention"])[:, :, :n_tgt, :n_src]}

  def translate(self, bundle, sentences, *, beam=4, alpha=None, max_extra=None, nbest=False,
                batch_size=32):
    settings = bundle.decode_settings(beam_size=beam, alpha=alpha, max_extra=max_extra)
    out = []
    for start in range(0, len(sentences), batch_size):
      chunk = sentences[start:start + batch_size]
      rows, _ = bundle.rows([bundle.tokenizer.encode(s) + [EOS_ID] for s in chunk])
      tokens, scores = bundle.run.translate(bundle.params, rows, settings)
      for r in range(len(chunk)):
        texts = [(bundle.tokenizer.decode(t), float(s)) for t, s in zip(tokens[r], scores[r])
                 if s > -1e8]
        out.append(texts if nbest else texts[0][0])
    return out


def _clip(text: str, width: int = 300) -> str:
  """A sample for the log: an untrained model's 300-token babble is cut to `width` characters."""
  return text if len(text) <= width else text[:width] + f"... ({len(text):,} characters)"
