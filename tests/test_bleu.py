"""BLEU two ways: sacreBLEU with its signature, and the tokenized BLEU the paper reports."""

import collections
import math

import sacrebleu

from xformer.evaluation import bleu


def test_tokenized_bleu_splits_compounds_and_punctuation_like_tensor2tensor():
  # Moses tokenization, then tensor2tensor's get_ende_bleu.sh compound split.
  assert bleu._t2t_tokens("Das Hotel-Zimmer ist gut.", "de") == (  # pylint: disable=protected-access
      "Das Hotel ##AT##-##AT## Zimmer ist gut .")
  hyps, refs = ["Das Hotel-Zimmer ist gut."], ["Das Hotel-Zimmer ist schön."]
  scores = bleu.bleu_scores(hyps, refs, lang="de")
  want = sacrebleu.corpus_bleu(["Das Hotel ##AT##-##AT## Zimmer ist gut ."],
                               [["Das Hotel ##AT##-##AT## Zimmer ist schön ."]],
                               tokenize="none").score
  assert abs(scores["bleu_tokenized"] - want) < 1e-9
  # The split adds matching n-grams here: tokenized BLEU is higher than sacreBLEU's 13a.
  assert scores["bleu_tokenized"] > scores["bleu"] + 10
  assert scores["signature"] == (f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|"
                                 f"version:{sacrebleu.__version__}")


def _corpus_bleu(hyps, refs):
  """Corpus BLEU (Papineni et al. 2002) on whitespace tokens, written out: clipped n-gram
  precisions for n = 1..4, their geometric mean, the brevity penalty. (No smoothing: every
  precision is non-zero in the cases here.)"""
  matches, totals, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
  for hyp, ref in zip(hyps, refs):
    h, r = hyp.split(), ref.split()
    hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
    for n in range(1, 5):
      grams = collections.Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
      ref_grams = collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
      matches[n - 1] += sum(min(c, ref_grams[g]) for g, c in grams.items())
      totals[n - 1] += max(len(h) - n + 1, 0)
  log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
  brevity = min(1.0, math.exp(1 - ref_len / hyp_len))
  return 100 * brevity * math.exp(log_precision)


def test_pretokenized_text_scores_as_it_is(capsys, monkeypatch):
  monkeypatch.setattr(bleu, "_WARNED_TOKENIZED", [])  # Printed once per process: reset it.
  hyps = ["the old poet sings a song today .", "a dog runs in the park ."]
  refs = ["the poet sings a song today .", "a dog runs in the green park ."]
  scores = bleu.bleu_scores(hyps, refs, lang="de", pretokenized=True)
  want = _corpus_bleu(hyps, refs)
  assert 40 < want < 90  # Neither trivial case: equal texts (100) or nothing shared (0).
  assert abs(scores["bleu"] - want) < 1e-6 and abs(scores["bleu_tokenized"] - want) < 1e-6
  assert "already tokenized" in capsys.readouterr().out
