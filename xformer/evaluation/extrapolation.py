"""How a trained model behaves past the length it was trained on (length generalisation).

LM: perplexity of the evaluation text cut into windows of 1x, 2x, 4x and 8x the training length
L, and per position bucket inside the longest window. An encoding with a learned table
(positional.LIMITED_TO_MAX_LEN) cannot read past model.max_len: those cells are None, never
numbers from untrained table rows; so are lengths the text is too short to fill once.
Translation: BLEU and exact match per split (`test` against `test_long`, whose sources are
longer than any in training).

Used by the evaluate command, experiments/length_generalization.py and the sweep.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

FACTORS = (1, 2, 4, 8)


def token_windows(token_lists: Sequence[Sequence[int]], window: int, bos: int) -> np.ndarray:
  """Non-overlapping windows [N, window + 1] of the concatenated texts (each text BOS-prefixed,
  EOS-ended by the caller): inputs are a row's first `window` tokens, targets its last."""
  stream = np.concatenate([np.asarray([bos] + list(t), np.int32) for t in token_lists])
  n = len(stream) // (window + 1)
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


def lm_report(logits_fn: Callable[[np.ndarray], Any], token_lists: Sequence[Sequence[int]], *,
              train_len: int, limit: int | None, bos: int, factors: Sequence[int] = FACTORS,
              batch_size: int = 8) -> dict[str, Any]:
  """Perplexity at window lengths k * train_len and per position bucket of the longest window.

  Args:
    logits_fn: tokens [B, W] -> logits [B, W, V] of the LM.
    token_lists: the evaluation texts' ids, each EOS-ended.
    limit: the longest window the model can read (a learned table's size), or None.
  """
  report: dict[str, Any] = {"train_len": train_len, "limit": limit, "ppl": {}, "windows": {}}
  longest = None
  for k in factors:
    window = k * train_len
    if limit is not None and window > limit:
      report["ppl"][k] = None  # Cannot be evaluated: positions past the learned table.
      continue
    rows = token_windows(token_lists, window, bos)
    if not len(rows):  # Not enough text for one window of this length.
      report["ppl"][k] = None
      continue
    nll = position_nll(logits_fn, rows, batch_size)
    report["ppl"][k] = math.exp(min(float(nll.mean()), 50.0))
    report["windows"][k] = len(rows)
    longest = (window, nll)
  if longest is not None:
    window, nll = longest
    edges = [0, train_len // 2] + [train_len * k for k in factors if train_len * k <= window]
    report["position_ppl"] = bucket_perplexity(nll, edges)
    report["position_nll_curve"] = nll.tolist()
  return report


def format_lm(reports: Sequence[tuple[str, dict[str, Any]]]) -> str:
  """A markdown table of (name, lm_report) rows: perplexity at each window length."""
  factors = sorted({int(k) for _, r in reports for k in r["ppl"]})
  lines = ["| encoding | " + " | ".join(f"ppl @ {k}x L" for k in factors) + " |",
           "|" + "---|" * (len(factors) + 1)]
  for name, r in reports:
    cells = []
    for k in factors:
      v = r["ppl"].get(k, r["ppl"].get(str(k)))
      cells.append(f"n/a (table ends at {r['limit']})" if v is None else f"{v:.2f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
