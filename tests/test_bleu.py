"""BLEU two ways: sacreBLEU with its signature, and the tokenized BLEU the paper reports."""

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
  assert scores["signature"] == bleu.sacrebleu_signature()
  assert "tok:13a" in scores["signature"] and "nrefs:1" in scores["signature"]


def test_pretokenized_text_scores_as_it_is(capsys):
  hyps = ["the poet sings .", "a dog runs ."]
  scores = bleu.bleu_scores(hyps, hyps, lang="de", pretokenized=True)
  assert abs(scores["bleu"] - 100) < 1e-9 and abs(scores["bleu_tokenized"] - 100) < 1e-9
  assert "already tokenized" in capsys.readouterr().out
