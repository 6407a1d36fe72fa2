"""How a trained run behaves past the length it was trained on.

  python experiments/length_generalization.py --workdir=runs/lm_rope
  python experiments/length_generalization.py --workdir=runs/default    # translation

LM (trained on sequences of L = data.max_target_len tokens): perplexity on the evaluation split
cut into windows of 1x, 2x, 4x and 8x L tokens, and per position bucket inside the longest
windows (n/a past a learned table). Translation: greedy BLEU and exact match on `test` (lengths
seen in training) and `test_long` (longer sources than any training sentence).
The arithmetic lives in xformer/extrapolation.py; this script applies it to a loaded run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xformer import bundle as bundle_lib  # noqa: E402
from xformer import bleu, extrapolation  # noqa: E402
from xformer.data import datasets  # noqa: E402
from xformer.data.tokenizer import BOS_ID, EOS_ID  # noqa: E402


def lm_report(b: bundle_lib.Bundle, split: str = "validation",
              factors=extrapolation.FACTORS, batch_size: int = 8) -> dict[str, Any]:
  """extrapolation.lm_report of a loaded LM on `split` of its dataset."""
  texts = [t for (t,) in datasets.load(b.config.data).examples(split)]
  tokens = [ids + [EOS_ID] for ids in b.tokenizer.encode_batch(texts)]
  logits = jax.jit(lambda p, rows: b.model.apply({"params": p}, rows))
  report = extrapolation.lm_report(lambda rows: logits(b.params, rows), tokens,
                                   train_len=b.config.data.max_target_len,
                                   limit=b.run.position_limit(), bos=BOS_ID, factors=factors,
                                   batch_size=batch_size)
  return {"posemb": b.model_config.posemb, **report}


def translation_report(b: bundle_lib.Bundle, splits=("test", "test_long"), limit: int = 500,
                       beam: int = 1) -> dict[str, Any]:
  """Greedy BLEU and exact match per split (first `limit` examples)."""
  dataset = datasets.load(b.config.data)
  report: dict[str, Any] = {"posemb": b.model_config.posemb}
  for split in splits:
    pairs = dataset.examples(split)[:limit]
    srcs, refs = [p[0] for p in pairs], [p[1] for p in pairs]
    src_lens = [len(b.tokenizer.encode(s)) + 1 for s in srcs]
    if b.run.position_limit() is not None and max(src_lens) > b.run.position_limit():
      report[split] = None
      continue
    hyps = b.translate(srcs, beam=beam)
    scores = bleu.bleu_scores(hyps, refs, lang=b.config.data.target_lang,
                                  pretokenized=dataset.pretokenized)
    report[split] = {"bleu": scores["bleu"], "exact": extrapolation.exact_match(hyps, refs),
                     "source_tokens_mean": float(np.mean(src_lens)),
                     "source_tokens_max": int(max(src_lens))}
  return report


# The report of each task that has one: (bundle, args) -> report.
REPORTS = {
    "lm": lambda b, args: lm_report(b, args.split, tuple(int(k) for k in args.factors.split(","))),
    "translation": lambda b, args: translation_report(b, limit=args.limit),
}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--split", default="validation", help="LM evaluation split.")
  p.add_argument("--factors", default="1,2,4,8")
  p.add_argument("--limit", type=int, default=500, help="Translation examples per split.")
  p.add_argument("--json", default="", help="Write the report here too.")
  args = p.parse_args(argv)
  b = bundle_lib.load(args.workdir)
  report = REPORTS[b.run.task.name](b, args)
  if "ppl" in report:
    print(extrapolation.format_lm([(report["posemb"], report)]))
    print("perplexity by position:", {k: round(v, 2) for k, v in report["position_ppl"].items()})
  else:
    print(json.dumps(report, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
