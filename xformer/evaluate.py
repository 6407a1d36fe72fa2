"""Evaluation: loss and perplexity over a split, BLEU of decoded translations."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
import sacrebleu

from xformer.data import pipeline
from xformer.data.tokenizer import Tokenizer


def summarize(sums: dict[str, float], prefix: str) -> dict[str, float]:
  """Token sums -> per-token loss, perplexity and accuracy."""
  weight = max(float(sums["weight"]), 1.0)
  nll = float(sums["nll"]) / weight
  return {f"{prefix}/loss": float(sums["loss"]) / weight, f"{prefix}/nll": nll,
          f"{prefix}/perplexity": math.exp(min(nll, 50.0)),
          f"{prefix}/accuracy": float(sums["correct"]) / weight,
          f"{prefix}/tokens": float(sums["weight"])}


def accumulate(batches: Iterable[dict[str, np.ndarray]],
               eval_fn: Callable[[dict[str, np.ndarray]], dict[str, Any]]) -> dict[str, float]:
  """Sums eval_fn's token sums over batches."""
  total: dict[str, float] = {}
  for batch in batches:
    sums = jax.device_get(eval_fn(batch))
    for k, v in sums.items():
      total[k] = total.get(k, 0.0) + float(v)
  return total


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """Corpus BLEU (sacrebleu, its default 13a tokenisation) of detokenized text."""
  return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score


def translate_split(dataset, split: str, encoded: pipeline.EncodedSource, tokenizer: Tokenizer,
                    translate_fn: Callable[[np.ndarray], np.ndarray], *, max_source_len: int,
                    batch_size: int, limit: int | None = None
                    ) -> tuple[list[str], list[str], list[str]]:
  """Translates a split in batches; returns (sources, hypotheses, references) as text.

  Over-long sources are truncated (every example is translated and scored).
  """
  n = len(encoded) if not limit else min(limit, len(encoded))
  srcs, hyps, refs = [], [], []
  lengths = pipeline.Lengths(max_source_len, max_source_len)
  frame = pipeline.Tokenize("translation", lengths, "truncate", pipeline.OverlongCounter())
  for start in range(0, n, batch_size):
    indices = range(start, min(start + batch_size, n))
    rows = np.zeros((batch_size, max_source_len), np.int32)  # Fixed shape: one compile.
    for r, i in enumerate(indices):
      ids = frame.map(encoded[i])["inputs"]
      rows[r, :len(ids)] = ids
    out = np.asarray(translate_fn(rows))
    for r, i in enumerate(indices):
      src, ref = dataset.example(split, i)
      srcs.append(src)
      refs.append(ref)
      hyps.append(tokenizer.decode(out[r]))
  return srcs, hyps, refs
