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


# --- Length generalisation -----------------------------------------------------------------------


def token_windows(token_lists: Sequence[Sequence[int]], window: int, bos: int) -> np.ndarray:
  """Non-overlapping windows [N, window] of the concatenated texts (each text BOS-prefixed,
  EOS-ended by the caller): every window is full length, the remainder is dropped."""
  stream = np.concatenate([np.asarray([bos] + list(t), np.int32) for t in token_lists])
  n = len(stream) // (window + 1)
  # Inputs window tokens and their next tokens as targets: rows of window + 1.
  return stream[:n * (window + 1)].reshape(n, window + 1)


def position_nll(logits_fn: Callable[[np.ndarray], Any], windows: np.ndarray,
                 batch_size: int = 8) -> np.ndarray:
  """Mean next-token NLL at each position [window] over rows [N, window + 1] of `windows`.

  `logits_fn(tokens [B, window]) -> logits [B, window, V]` is the LM (full causal pass).
  """
  total = np.zeros(windows.shape[1] - 1)
  for start in range(0, len(windows), batch_size):
    rows = windows[start:start + batch_size]
    logits = np.asarray(jax.device_get(logits_fn(rows[:, :-1])), np.float32)
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total += -np.take_along_axis(logp, rows[:, 1:, None], -1)[..., 0].sum(0)
  return total / max(len(windows), 1)


def bucket_perplexity(nll: np.ndarray, edges: Sequence[int]) -> dict[str, float]:
  """Perplexity of positions [edges[i], edges[i+1]) of a per-position NLL curve."""
  out = {}
  for lo, hi in zip(edges[:-1], edges[1:]):
    if hi <= len(nll):
      out[f"{lo}-{hi}"] = math.exp(min(float(nll[lo:hi].mean()), 50.0))
  return out


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """Fraction of hypotheses equal to their reference (whitespace-normalised)."""
  same = sum(" ".join(h.split()) == " ".join(r.split()) for h, r in zip(hypotheses, references))
  return same / max(len(references), 1)
