"""TFDS dataset builders of our own, stored as array_record and read with random access.

  * `XformerTranslation`: the embedded synthetic language pair (xformer.data.synthetic);
  * `XformerPydoc`: English prose that ships with every CPython, the documentation topics of
    `pydoc_data.topics`, one paragraph per example;
  * `XformerParallelText` / `XformerPlainText`: the user's own files, named in the config.

Nothing here needs TensorFlow or the network. Examples are `{"source", "target"}` (translation)
or `{"text"}` (language modelling) strings.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import tensorflow_datasets as tfds

from xformer import errors
from xformer.data import synthetic, text_files

_TRANSLATION_FEATURES = {"source": tfds.features.Text(), "target": tfds.features.Text()}


def _translation_info(builder, description: str) -> tfds.core.DatasetInfo:
  return tfds.core.DatasetInfo(builder=builder, description=description,
                               features=tfds.features.FeaturesDict(_TRANSLATION_FEATURES),
                               supervised_keys=("source", "target"))


def _text_info(builder, description: str) -> tfds.core.DatasetInfo:
  return tfds.core.DatasetInfo(builder=builder, description=description,
                               features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))


class XformerTranslation(tfds.core.GeneratorBasedBuilder):
  """The embedded synthetic translation task: 100K train pairs, disjoint eval splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self):
    return _translation_info(self, synthetic.__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in synthetic.SIZES}

  def _generate_examples(self, split):
    for i, (src, tgt) in enumerate(synthetic.generate(split)):
      yield i, {"source": src, "target": tgt}


def pydoc_paragraphs() -> list[str]:
  """The English paragraphs of CPython's documentation topics, in a fixed order."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel

  paragraphs = []
  for key in sorted(topics.topics):
    for para in topics.topics[key].split("\n\n"):
      text = " ".join(para.split())
      if len(text) >= 40:  # Drop headings, rules and one-word fragments.
        paragraphs.append(text)
  return list(dict.fromkeys(paragraphs))  # Drop repeated paragraphs, keep first occurrences.


def pydoc_split_of(paragraph: str) -> str:
  """5% test, 5% validation, the rest train, by a hash of the paragraph: stable and disjoint."""
  bucket = int(hashlib.md5(paragraph.encode()).hexdigest(), 16) % 100
  return "test" if bucket < 5 else "validation" if bucket < 10 else "train"


class XformerPydoc(tfds.core.GeneratorBasedBuilder):
  """CPython's documentation topics as a language-modelling corpus (one paragraph per example).

  The text comes with the Python that builds it, so a different Python version gives a slightly
  different corpus; the version is part of the builder config name.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"py{sys.version_info[0]}{sys.version_info[1]}")]

  def _info(self):
    return _text_info(self, self.__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager
    paragraphs = pydoc_paragraphs()
    return {s: self._generate_examples(paragraphs, s) for s in ("train", "validation", "test")}

  def _generate_examples(self, paragraphs, split):
    for i, text in enumerate(paragraphs):
      if pydoc_split_of(text) == split:
        yield i, {"text": text}


class FilesConfig(tfds.core.BuilderConfig):
  """A builder config naming the user's files per split; its name fingerprints the files."""

  def __init__(self, *, files: dict[str, list[str]], on_bad_line: str = "skip",
               max_chars: int = 10_000):
    self.files = {k: [os.path.abspath(os.path.expanduser(p)) for p in v] for k, v in files.items()}
    for split, paths in self.files.items():
      for path in paths:
        if not os.path.isfile(path):
          raise errors.ConfigError(f"data files for split {split!r}: {path} does not exist.")
    self.on_bad_line = on_bad_line
    self.max_chars = max_chars
    stamp = {k: [(p, os.path.getsize(p), os.path.getmtime(p)) for p in v]
             for k, v in self.files.items()}
    digest = hashlib.sha1(json.dumps([stamp, on_bad_line, max_chars]).encode()).hexdigest()
    super().__init__(name=f"files_{digest[:12]}", version="1.0.0")


class _SplitsFromFiles:
  """For builders of the user's files: one split per entry of the FilesConfig."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, paths)
            for split, paths in self.builder_config.files.items()}


class XformerParallelText(_SplitsFromFiles, tfds.core.GeneratorBasedBuilder):
  """The user's parallel text: per split, [source_file, target_file] or [tsv_file]."""

  def _info(self):
    return _translation_info(self, self.__doc__)

  def _generate_examples(self, split, paths):
    if len(paths) not in (1, 2):
      raise errors.ConfigError(f"split {split!r}: give [source, target] files or one TSV, got {paths}.")
    cfg = self.builder_config
    skips = text_files.SkipCounts()
    pairs = text_files.read_parallel(paths[0], paths[1] if len(paths) == 2 else None,
                                     cfg.max_chars, cfg.on_bad_line, skips)
    for i, (src, tgt) in enumerate(pairs):
      yield i, {"source": src, "target": tgt}
    text_files.log_skips(f"{split} ({', '.join(paths)})", skips)


class XformerPlainText(_SplitsFromFiles, tfds.core.GeneratorBasedBuilder):
  """The user's plain text for language modelling: per split, a list of files, a line each."""

  def _info(self):
    return _text_info(self, self.__doc__)

  def _generate_examples(self, split, paths):
    cfg = self.builder_config
    skips = text_files.SkipCounts()
    for path in paths:
      for i, text in enumerate(text_files.read_text(path, cfg.max_chars, cfg.on_bad_line, skips)):
        yield f"{path}:{i}", {"text": text}
    text_files.log_skips(f"{split} ({', '.join(paths)})", skips)
