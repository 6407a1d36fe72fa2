"""How a trained run behaves past the length it was trained on.

  python experiments/length_generalization.py --workdir=runs/lm_rope
  python experiments/length_generalization.py --workdir=runs/default    # translation

LM (trained on sequences of L = data.max_target_len tokens): perplexity on the evaluation split
cut into windows of 1x, 2x, 4x and 8x L tokens, and per position bucket inside the longest
windows (n/a past a learned table). `--rope_scaling=yarn` (or linear, ntk) reads a RoPE run
trained without scaling with it, at factor k for the k x L windows. Translation: greedy BLEU and exact match on `test` (lengths
seen in training) and `test_long` (longer sources than any training sentence).
The arithmetic lives in xformer/evaluation/extrapolation.py; this script applies it to a loaded run.
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

from xformer.data import datasets  # noqa: E402
from xformer.data.tokenizer import BOS_ID, EOS_ID  # noqa: E402
from xformer.evaluation import (
  bleu,  # noqa: E402
  extrapolation,  # noqa: E402
)
from xformer.workdir import bundle as bundle_lib  # noqa: E402


def _logits_fn(b: bundle_lib.Bundle, rope_scaling: str | None, factor: int):
  """tokens -> logits of the run's LM, or of it with RoPE `rope_scaling` at `factor` (applied at
  evaluation to a run trained without it: the "extend at inference" use)."""
  model = b.model
  if rope_scaling and factor > 1:
    if b.model_config.posemb != "rope":
      raise ValueError(f"--rope_scaling applies to RoPE runs; this one is "
                       f"{b.model_config.posemb!r}.")
    kw = {**dict(b.model_config.posemb_kw), "scaling": rope_scaling, "factor": float(factor),
          "original_len": b.config.data.max_target_len}
    model = b.run.task.build_model(b.model_config.replace(posemb_kw=kw))
  logits = jax.jit(lambda p, rows: model.apply({"params": p}, rows))
  return lambda rows: logits(b.params, rows)


def lm_report(b: bundle_lib.Bundle, split: str = "validation",
              factors=extrapolation.FACTORS, batch_size: int = 8,
              rope_scaling: str | None = None) -> dict[str, Any]:
  """extrapolation.lm_report of a loaded LM on `split` of its dataset; with `rope_scaling`
  ("linear", "ntk", "yarn"), each window of k x L tokens is read with that scaling at factor k."""
  texts = [t for (t,) in datasets.load(b.config.data).examples(split)]
  tokens = [ids + [EOS_ID] for ids in b.tokenizer.encode_batch(texts)]
  kw = dict(train_len=b.config.data.max_target_len, limit=b.run.position_limit(), bos=BOS_ID,
            batch_size=batch_size)
  if not rope_scaling:
    report = extrapolation.lm_report(_logits_fn(b, None, 1), tokens, factors=factors, **kw)
  else:  # One factor at a time; the longest window's curves come from the last.
    report = {}
    for k in factors:
      part = extrapolation.lm_report(_logits_fn(b, rope_scaling, k), tokens, factors=(k,), **kw)
      ppl, windows = {**report.get("ppl", {}), **part["ppl"]}, {**report.get("windows", {}),
                                                                **part["windows"]}
      report = {**report, **part, "ppl": ppl, "windows": windows}
  name = b.model_config.posemb + (f"+{rope_scaling}" if rope_scaling else "")
  return {"posemb": name, **report}


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
    "lm": lambda b, args: lm_report(b, args.split, tuple(int(k) for k in args.factors.split(",")),
                                    rope_scaling=args.rope_scaling or None),
    "translation": lambda b, args: translation_report(b, limit=args.limit),
}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--split", default="validation", help="LM evaluation split.")
  p.add_argument("--factors", default="1,2,4,8")
  p.add_argument("--limit", type=int, default=500, help="Translation examples per split.")
  p.add_argument("--json", default="", help="Write the report here too.")
  p.add_argument("--rope_scaling", default="", choices=("", "linear", "ntk", "yarn"),
                 help="LM with RoPE: read each k x L window with this scaling at factor k.")
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
