"""How a trained run behaves past the length it was trained on.

  python experiments/length_generalization.py --workdir=runs/lm_rope
  python experiments/length_generalization.py --workdir=runs/default    # translation

LM (trained on sequences of L = data.max_target_len tokens): perplexity on the evaluation split
cut into windows of 1x, 2x, 4x and 8x L tokens, and per position bucket inside the longest
windows. An encoding with a learned table (positional.LIMITED_TO_MAX_LEN) cannot read past
model.max_len: those cells say n/a instead of numbers from untrained table rows.
Translation: greedy BLEU and exact match on `test` (lengths seen in training) and `test_long`
(longer sources than any training sentence).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import numpy as np

from xformer import bundle as bundle_lib
from xformer import evaluate, positional
from xformer.data import datasets
from xformer.data.tokenizer import BOS_ID, EOS_ID

FACTORS = (1, 2, 4, 8)


def table_limit(b: bundle_lib.Bundle) -> int | None:
  cls = positional.get(b.model_config.posemb)
  return b.model_config.max_len if cls.LIMITED_TO_MAX_LEN else None


def lm_report(b: bundle_lib.Bundle, split: str = "validation", factors=FACTORS,
              batch_size: int = 8) -> dict[str, Any]:
  """Perplexity at window lengths k * L and per position bucket of the longest window."""
  dataset = datasets.load(b.config.data)
  texts = [t for (t,) in dataset.examples(split)]
  tokens = [ids + [EOS_ID] for ids in b.tokenizer.encode_batch(texts)]
  train_len = b.config.data.max_target_len
  limit = table_limit(b)
  apply = lambda rows: b._apply({"params": b.params}, rows)  # noqa: E731  pylint: disable=protected-access
  report: dict[str, Any] = {"posemb": b.model_config.posemb, "train_len": train_len,
                            "limit": limit, "ppl": {}, "windows": {}}
  longest = None
  for k in factors:
    window = k * train_len
    if limit is not None and window > limit:
      report["ppl"][k] = None  # Cannot be evaluated: positions past the learned table.
      continue
    rows = evaluate.token_windows(tokens, window, BOS_ID)
    nll = evaluate.position_nll(apply, rows, batch_size)
    report["ppl"][k] = math.exp(float(nll.mean()))
    report["windows"][k] = len(rows)
    longest = (window, nll)
  if longest is not None:
    window, nll = longest
    edges = [0, train_len // 2] + [train_len * k for k in factors if train_len * k <= window]
    report["position_ppl"] = evaluate.bucket_perplexity(nll, edges)
    report["position_nll_curve"] = nll.tolist()
  return report


def translation_report(b: bundle_lib.Bundle, splits=("test", "test_long"), limit: int = 500,
                       beam: int = 1) -> dict[str, Any]:
  """Greedy BLEU and exact match per split (first `limit` examples)."""
  dataset = datasets.load(b.config.data)
  report: dict[str, Any] = {"posemb": b.model_config.posemb}
  for split in splits:
    pairs = dataset.examples(split)[:limit]
    srcs, refs = [p[0] for p in pairs], [p[1] for p in pairs]
    src_lens = [len(b.tokenizer.encode(s)) + 1 for s in srcs]
    if table_limit(b) is not None and max(src_lens) > table_limit(b):
      report[split] = None
      continue
    hyps = b.translate(srcs, beam=beam)
    report[split] = {"bleu": evaluate.bleu(hyps, refs), "exact": evaluate.exact_match(hyps, refs),
                     "source_tokens_mean": float(np.mean(src_lens)),
                     "source_tokens_max": int(max(src_lens))}
  return report


def format_lm(reports: list[dict[str, Any]]) -> str:
  factors = sorted({int(k) for r in reports for k in r["ppl"]})
  head = "| encoding | " + " | ".join(f"ppl @ {k}x L" for k in factors) + " |"
  lines = [head, "|" + "---|" * (len(factors) + 1)]
  for r in reports:
    cells = []
    for k in factors:
      v = r["ppl"].get(k, r["ppl"].get(str(k)))
      cells.append("n/a (table ends at %d)" % r["limit"] if v is None else f"{v:.2f}")
    lines.append(f"| {r['posemb']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--split", default="validation", help="LM evaluation split.")
  p.add_argument("--factors", default="1,2,4,8")
  p.add_argument("--limit", type=int, default=500, help="Translation examples per split.")
  p.add_argument("--json", default="", help="Write the report here too.")
  args = p.parse_args(argv)
  b = bundle_lib.load(args.workdir)
  if b.is_lm:
    report = lm_report(b, args.split, tuple(int(k) for k in args.factors.split(",")))
    print(format_lm([report]))
    if "position_ppl" in report:
      print("perplexity by position:", {k: round(v, 2) for k, v in report["position_ppl"].items()})
  else:
    report = translation_report(b, limit=args.limit)
    print(json.dumps(report, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
