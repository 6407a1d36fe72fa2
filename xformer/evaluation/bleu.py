"""BLEU as papers report it and as sacreBLEU signs it.

`bleu` is sacreBLEU on detokenized text (13a, its signature says how); `bleu_tokenized` is the
number Vaswani et al. (2017) put in Table 2: multi-bleu over Moses-tokenized text with hyphenated
compounds split, as tensor2tensor's get_ende_bleu.sh does. Put the second next to 27.3 / 28.4.
"""

import functools
import re
from typing import Any, Sequence

import sacrebleu

_WARNED_TOKENIZED = []


def bleu_scores(hypotheses: Sequence[str], references: Sequence[str], *, lang: str,
                pretokenized: bool = False) -> dict[str, Any]:
  """BLEU two ways: `bleu`, sacreBLEU on the text (13a tokenisation; `signature` says how), and
  `bleu_tokenized`, the number Vaswani et al. report: multi-bleu on Moses-tokenized text with
  hyphenated compounds split (tensor2tensor's get_ende_bleu.sh, "a-b" -> "a ##AT##-##AT## b").

  `pretokenized` text (the embedded synthetic task: "the poet sings .") is scored as it is;
  sacreBLEU's warning that it "looks tokenized" is then expected and silenced.
  """
  hyps, refs = list(hypotheses), list(references)
  if pretokenized and not _WARNED_TOKENIZED:
    _WARNED_TOKENIZED.append(True)
    from xformer.runtime.metric_writer import log_line  # pylint: disable=import-outside-toplevel
    log_line("BLEU: this dataset's text is already tokenized (\"word .\"); sacreBLEU scores it "
             "as it is (its 'tokenized period' warning does not apply).")
  sacre = sacrebleu.BLEU(force=pretokenized)
  score = sacre.corpus_score(hyps, [refs])
  tokenized = sacrebleu.BLEU(tokenize="none", force=True).corpus_score(
      [_t2t_tokens(h, lang) for h in hyps], [[_t2t_tokens(r, lang) for r in refs]])
  return {"bleu": float(score.score), "bleu_tokenized": float(tokenized.score),
          "signature": str(sacre.get_signature())}


@functools.lru_cache(maxsize=None)
def _moses(lang: str):
  from sacremoses import MosesTokenizer  # pylint: disable=import-outside-toplevel
  return MosesTokenizer(lang=lang)


def sacrebleu_signature() -> str:
  """The signature of `bleu_scores`' sacreBLEU (its defaults: 13a, mixed case, exp smoothing)."""
  bleu = sacrebleu.BLEU()
  bleu.corpus_score(["x"], [["x"]])
  return str(bleu.get_signature())


def _t2t_tokens(text: str, lang: str) -> str:
  """Moses tokenization (escape off) and the compound split of tensor2tensor's BLEU script."""
  tokens = _moses(lang).tokenize(text, escape=False, return_str=True)
  return re.sub(r"(\S)-(\S)", r"\1 ##AT##-##AT## \2", tokens)
