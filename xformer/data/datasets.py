"""Datasets by name: the embedded ones, the user's files, and real TFDS datasets.

`load(data_config)` returns a `Dataset`: random-access sources per split (TFDS `data_source`
over array_record, no TensorFlow) plus what the pipeline and the tokenizer need to know.

    data.dataset = "xformer_translation"      embedded synthetic translation task (default)
                 | "xformer_pydoc"            embedded LM corpus: CPython documentation prose
                 | "parallel_files"           user's parallel text (data.files: split -> paths)
                 | "text_files"               user's plain text for LM (data.files)
                 | "wmt14_translate/de-en" | "wmt17_translate/de-en"   (data.source_lang/target_lang)
                 | "lm1b"
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from typing import Any, Callable, Sequence

import tensorflow_datasets as tfds

from etils import epath

from xformer import errors, registry
from xformer.data import builders, downloads, mirror, synthetic
from xformer.data.checked_source import CheckedSource

DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")


class DataUnavailableError(errors.UserError, RuntimeError):
  """A dataset that is neither prepared locally nor downloadable now."""


@dataclasses.dataclass
class Dataset:
  """Random-access splits of one dataset.

  Attributes:
    name: display name. kind: "translation" (source, target) or "lm" (text).
    splits: split name -> random-access source of raw examples (dicts of bytes).
    keys: the raw example keys read: (source, target) for translation, (text,) for LM.
    fingerprint: identifies the data exactly (keys the tokenizer cache).
    pretokenized: whether its text is already tokenized ("a word ."), as BLEU needs to know.
  """

  name: str
  kind: str
  splits: dict[str, Sequence[dict[str, Any]]]
  keys: tuple[str, ...]
  fingerprint: str
  pretokenized: bool = False

  def split(self, name: str) -> Sequence[dict[str, Any]]:
    if name not in self.splits:
      raise errors.ConfigError(f"Dataset {self.name} has no split {name!r}; it has {list(self.splits)}.")
    return self.splits[name]

  def example(self, split: str, index: int) -> tuple[str, ...]:
    """The decoded strings of one example: (source, target) or (text,)."""
    raw = self.split(split)[index]
    return tuple(text_of(raw[k]) for k in self.keys)

  def examples(self, split: str) -> list[tuple[str, ...]]:
    """Every example of a split, decoded, read in one batch."""
    return [tuple(text_of(raw[k]) for k in self.keys) for raw in read_all(self.split(split))]

  def sample_texts(self, split: str, size: int, seed: int = 0,
                   chunk: int = 65_536) -> list[str]:
    """`size` strings of a split (both sides of a pair count), drawn without replacement with a
    seeded `random.sample` (every string, in order, when there are fewer), for tokenizer
    training. Only the sample is ever held: records are read in sorted chunks."""
    source, k = self.split(split), len(self.keys)
    total = len(source) * k
    picks = range(total) if size >= total else random.Random(seed).sample(range(total), size)
    wanted = sorted({p // k for p in picks})
    texts: dict[int, str] = {}
    for start in range(0, len(wanted), chunk):
      rows = wanted[start:start + chunk]
      for i, raw in zip(rows, read_rows(source, rows)):
        for j, key in enumerate(self.keys):
          texts[i * k + j] = text_of(raw[key])
    return [texts[p] for p in picks if texts[p]]


def read_rows(source: Sequence[Any], rows: Sequence[int]) -> list[Any]:
  """Records `rows` of a source; one batched read when the source offers it (array_record reads
  records one by one, in a batch much faster: benchmarks/README.md)."""
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(list(rows)))
  return [source[i] for i in rows]


def read_all(source: Sequence[Any]) -> list[Any]:
  """Every record of a source, in one batched read when it offers one."""
  return read_rows(source, range(len(source)))


def text_of(value: Any) -> str:
  """A raw example's string (TFDS text features are bytes)."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


show_progress = False  # TFDS progress bars while preparing (xformer.data.prepare sets it).


def _prepared(builder: tfds.core.DatasetBuilder, cfg, hint: str) -> None:
  if (epath.Path(builder.data_dir) / "dataset_info.json").exists():
    return
  remote = data_root(cfg)
  if "://" in remote:  # A local mirror of a bucket (xformer/data/mirror.py).
    remote = f"{remote.rstrip('/')}/{os.path.relpath(builder.data_dir, data_dir(cfg))}"
    if mirror.pull(remote, str(builder.data_dir)):
      builder.info.read_from_directory(builder.data_dir)  # Built before the files were there.
      return
  _prepare(builder, cfg, hint)
  if "://" in remote:
    mirror.push(str(builder.data_dir), remote)
    logging.warning("Dataset pushed to %s for the other hosts and later runs.", remote)


def _prepare(builder: tfds.core.DatasetBuilder, cfg, hint: str) -> None:
  if not cfg.get("download", True):
    raise DataUnavailableError(f"Dataset {builder.name} is not prepared in {builder.data_dir} "
                               f"and data.download=False. {hint}")
  logging.warning("Preparing dataset %s %s in %s (once; `python -m xformer.data.prepare` shows "
                  "progress).", builder.name, builder.version, builder.data_dir)
  tfds.display_progress_bar(show_progress)
  try:
    downloads.download_and_prepare(builder, cfg.get("raw_dir") or None)
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if (epath.Path(builder.data_dir) / "dataset_info.json").exists():
      # Several processes of one run prepared it at once and another one finished first (TFDS
      # renames a complete directory into place; the later rename fails). Same data: use it.
      logging.info("Dataset %s was prepared by another process meanwhile.", builder.name)
      return
    raise DataUnavailableError(
        f"Could not prepare dataset {builder.name} in {builder.data_dir}: "
        f"{type(e).__name__}: {str(e)[:300]}. {hint}") from e


def _from_builder(builder: tfds.core.DatasetBuilder, kind: str, keys: tuple[str, ...], cfg,
                  hint: str = "", pretokenized: bool = False) -> Dataset:
  _prepared(builder, cfg, hint)
  splits = {name: CheckedSource(builder.as_data_source(split=name), name, _shards(builder, name))
            for name in builder.info.splits}
  fingerprint = f"{builder.name}/{builder.builder_config.name if builder.builder_config else ''}"
  fingerprint += f"/{builder.version}/{json.dumps(sorted(keys))}"
  return Dataset(name=builder.name, kind=kind, splits=splits, keys=keys, fingerprint=fingerprint,
                 pretokenized=pretokenized)


def _shards(builder: tfds.core.DatasetBuilder, split: str) -> list[tuple[str, int]]:
  """(file, number of records) of a split's shards, in record order."""
  return [(f.filename, f.take if f.take >= 0 else f.examples_in_shard - f.skip)
          for f in builder.info.splits[split].file_instructions]


def data_root(cfg) -> str:
  """data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (local or gs://)."""
  path = cfg.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
  return path if "://" in path else os.path.expanduser(path)


def data_dir(cfg) -> str:
  """Where the builders read and write: data_root, or for a gs:// root its local mirror."""
  root = data_root(cfg)
  return mirror.local_root(root) if "://" in root else root


@dataclasses.dataclass(frozen=True)
class Spec:
  """A named dataset: its kind, its splits (the real dataset's, known without reading it), and
  how to load it. `splits` None: the splits named in data.files."""

  kind: str
  splits: tuple[str, ...] | None
  load: Callable[[Any], Dataset]

  def split_names(self, cfg) -> tuple[str, ...]:
    return self.splits if self.splits is not None else tuple(_files(cfg))


DATASETS: registry.Registry[Spec] = registry.Registry("dataset")


def spec(name: str) -> Spec:
  return DATASETS.get(name)


def _register(name: str, kind: str, splits: tuple[str, ...] | None):
  def decorator(load: Callable[[Any], Dataset]):
    DATASETS.register(name)(Spec(kind, splits, load))
    return load
  return decorator


@_register("xformer_translation", "translation", tuple(synthetic.SIZES))
def _embedded_translation(cfg) -> Dataset:
  builder = builders.XformerTranslation(data_dir=data_dir(cfg), file_format="array_record")
  # Its text is tokenized ("the poet sings ."): BLEU scores it as it is (bleu.bleu_scores).
  return _from_builder(builder, "translation", ("source", "target"), cfg, pretokenized=True)


@_register("xformer_pydoc", "lm", ("train", "validation", "test"))
def _embedded_lm(cfg) -> Dataset:
  builder = builders.XformerPydoc(data_dir=data_dir(cfg), file_format="array_record")
  return _from_builder(builder, "lm", ("text",), cfg)


def _files(cfg) -> dict[str, list[str]]:
  files = cfg.get("files") or {}
  if isinstance(files, str):  # From the command line: a JSON object.
    try:
      files = json.loads(files)
    except json.JSONDecodeError as e:
      raise errors.ConfigError(
          f"data.files must be a JSON object {{split: [paths]}}, got {files!r}.") from e
  files = dict(files)
  if "train" not in files:
    raise errors.ConfigError("data.files must name at least a 'train' split, e.g. "
                             "--config.data.files='{\"train\": [\"train.en\", \"train.de\"]}'.")
  return {k: [v] if isinstance(v, str) else list(v) for k, v in files.items()}


def _files_config(cfg) -> builders.FilesConfig:
  return builders.FilesConfig(files=_files(cfg), on_bad_line=cfg.get("on_bad_line", "skip"),
                              max_chars=cfg.get("max_chars", 10_000))


@_register("parallel_files", "translation", None)
def _parallel_files(cfg) -> Dataset:
  builder = builders.XformerParallelText(config=_files_config(cfg), data_dir=data_dir(cfg),
                                         file_format="array_record")
  return _from_builder(builder, "translation", ("source", "target"), cfg)


@_register("text_files", "lm", None)
def _text_files(cfg) -> Dataset:
  builder = builders.XformerPlainText(config=_files_config(cfg), data_dir=data_dir(cfg),
                                      file_format="array_record")
  return _from_builder(builder, "lm", ("text",), cfg)


_NETWORK_HINT = ("Real datasets need the network the first time (`python -m "
                 "xformer.data.prepare --config=...`): run it where the network is reachable, "
                 "give the raw files with data.raw_dir, or prepare elsewhere and point "
                 "data.data_dir at the copy.")


def _wmt(name: str):
  def load_wmt(cfg) -> Dataset:
    import tensorflow_datasets.translate.wmt14  # pylint: disable=import-outside-toplevel,unused-import
    import tensorflow_datasets.translate.wmt17  # pylint: disable=import-outside-toplevel,unused-import
    builder = tfds.builder(name, data_dir=data_dir(cfg), file_format="array_record")
    pair = tuple(builder.info.features.languages)
    src, tgt = cfg.get("source_lang", "en"), cfg.get("target_lang", "de")
    if {src, tgt} != set(pair):
      raise errors.ConfigError(f"{name} holds languages {pair}; data.source_lang={src!r} and "
                               f"data.target_lang={tgt!r} must be those two, in either order.")
    return _from_builder(builder, "translation", (src, tgt), cfg, _NETWORK_HINT)
  return load_wmt


for _name in ("wmt14_translate/de-en", "wmt17_translate/de-en"):
  _register(_name, "translation", ("train", "validation", "test"))(_wmt(_name))


@_register("lm1b", "lm", ("train", "test"))
def _lm1b(cfg) -> Dataset:
  builder = tfds.builder("lm1b", data_dir=data_dir(cfg), file_format="array_record")
  return _from_builder(builder, "lm", ("text",), cfg, _NETWORK_HINT)


def load(cfg) -> Dataset:
  """The dataset named by `cfg.dataset` (a data ConfigDict or a dict), built if needed."""
  dataset = spec(cfg.get("dataset") if hasattr(cfg, "get") else cfg["dataset"]).load(cfg)
  logging.info("Dataset %s: %s", dataset.name,
               {name: len(source) for name, source in dataset.splits.items()})
  return dataset
