"""Fake raw files of the real datasets, in their builders' download layouts, for offline tests.

`python -m xformer.data.prepare --config.data.raw_dir=DIR` then runs the real TFDS builders'
own preparation code on them: the array_record dataset it writes carries the real name, config,
version, features, keys and split names (only the sentences are fake: pairs of the embedded
synthetic language, so that a model can learn something in a few steps).

    WMT14 de-en: europarl_v7 (as a real .tgz), commoncrawl and newscommentary_v9 (as already
      extracted directories), dev.tgz with newstest2013 (text) and newstest2014 (SGML).
    lm1b: the 1-billion-word .tar.gz with a training shard and a held-out shard.
"""

from __future__ import annotations

import io
import os
import random
import tarfile

from xformer.data import synthetic


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
  rng = random.Random(seed)
  return [synthetic.sentence(rng, 0, max_adj=1) for _ in range(n)]


def _write(root: str, files: dict[str, str]) -> None:
  for rel, text in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)


def _tgz(path: str, files: dict[str, str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, "w:gz") as archive:
    for rel, text in files.items():
      data = text.encode("utf-8")
      info = tarfile.TarInfo(rel)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))


def _parallel(prefix: str, pairs: list[tuple[str, str]]) -> dict[str, str]:
  """{prefix.de: German side, prefix.en: English side}; our synthetic target plays German."""
  return {f"{prefix}.en": "".join(en + "\n" for en, _ in pairs),
          f"{prefix}.de": "".join(de + "\n" for _, de in pairs)}


def _sgm(pairs: list[str], lang: str) -> str:
  segs = "".join(f'<seg id="{i + 1}">{text}</seg>\n' for i, text in enumerate(pairs))
  return (f'<srcset setid="newstest2014" srclang="any">\n<doc sysid="ref" docid="1" '
          f'genre="news" origlang="{lang}">\n{segs}</doc>\n</srcset>\n')


def write_wmt14_raw(root: str, n_train: int = 1500, n_eval: int = 60) -> str:
  """The raw files TFDS's wmt14_translate/de-en reads, under `root`; returns root."""
  train = _pairs(n_train, 0)
  third = n_train // 3
  _tgz(os.path.join(root, "training-parallel-europarl-v7.tgz"),
       _parallel("training/europarl-v7.de-en", train[:third]))
  _write(os.path.join(root, "training-parallel-commoncrawl.tgz"),
         _parallel("commoncrawl.de-en", train[third:2 * third]))
  _write(os.path.join(root, "training-parallel-nc-v9.tgz"),
         _parallel("training/news-commentary-v9.de-en", train[2 * third:]))
  dev, test = _pairs(n_eval, 1), _pairs(n_eval, 2)
  _write(os.path.join(root, "dev.tgz"), {
      **_parallel("dev/newstest2013", dev),
      "dev/newstest2014-deen-src.de.sgm": _sgm([de for _, de in test], "de"),
      "dev/newstest2014-deen-ref.en.sgm": _sgm([en for en, _ in test], "de")})
  return root


def write_lm1b_raw(root: str, n_train: int = 2000, n_test: int = 100) -> str:
  """The raw archive TFDS's lm1b reads, under `root`; returns root."""
  top = "1-billion-word-language-modeling-benchmark-r13output"
  lines = lambda pairs: "".join(f"{en}\n" for en, _ in pairs)  # noqa: E731
  _tgz(os.path.join(root, f"{top}.tar.gz"), {
      f"{top}/training-monolingual.tokenized.shuffled/news.en-00001-of-00100":
          lines(_pairs(n_train, 3)),
      f"{top}/heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050":
          lines(_pairs(n_test, 4))})
  return root
