"""SentencePiece tokenizer: trained on the training split, cached, stored with the run.

Ids are fixed for every model: 0 = padding, 1 = EOS, 2 = BOS, 3 = unknown. One tokenizer serves
source and target by default (the paper's shared vocabulary).

Caching: a trained model is kept under `<data_dir>/xformer_tokenizers/<key>.model`, where the key
hashes the dataset's fingerprint and every training setting, so a second run with the same data
and settings reuses it. A copy goes into the run's workdir (`tokenizer.model` plus
`tokenizer.json` with its settings): a checkpoint can always be decoded, even if the cache is gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import time
from typing import Iterable, Sequence

from etils import epath
import sentencepiece as spm

from xformer import errors

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
MODEL_TYPES = ("unigram", "bpe")


@dataclasses.dataclass(frozen=True)
class TokenizerSettings:
  """What a tokenizer is trained with; every field is part of the cache key."""

  vocab_size: int = 8000
  model_type: str = "unigram"
  character_coverage: float = 1.0
  sample_size: int = 1_000_000  # Sentences sampled (seeded) from the training split.
  normalization: str = "nmt_nfkc"
  byte_fallback: bool = True  # Unseen characters become byte pieces, never <unk>.

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"tokenizer.model_type={self.model_type!r}; choose one of {MODEL_TYPES}.")


def settings_of(section) -> TokenizerSettings:
  """config.tokenizer as TokenizerSettings, validated (cache_dir is where, not what)."""
  errors.check_choice("tokenizer.model_type", section.model_type, MODEL_TYPES)
  if section.vocab_size < 8:
    raise errors.ConfigError(f"tokenizer.vocab_size must be >= 8, got {section.vocab_size}.")
  return TokenizerSettings(**{k: v for k, v in section.items() if k != "cache_dir"})


class Tokenizer:
  """A SentencePiece model with the id conventions above."""

  def __init__(self, model_proto: bytes, origin: str = ""):
    self.model_proto = model_proto
    self.origin = origin  # Where it came from, for people ("cache /path", "trained in 3.2s").
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    if (self.sp.pad_id(), self.sp.eos_id(), self.sp.bos_id(), self.sp.unk_id()) != (
        PAD_ID, EOS_ID, BOS_ID, UNK_ID):
      raise ValueError("SentencePiece model does not use xformer's ids "
                       f"(pad {PAD_ID}, eos {EOS_ID}, bos {BOS_ID}, unk {UNK_ID}).")

  @property
  def vocab_size(self) -> int:
    return self.sp.vocab_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS or EOS."""
    return self.sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self.sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ids, stopping at the first EOS; padding and BOS are dropped."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i not in (PAD_ID, BOS_ID):
        out.append(i)
    return self.sp.decode(out)

  def normalize(self, text: str) -> str:
    """`text` as the tokenizer sees it (decode(encode(x)) == normalize(x))."""
    return self.sp.normalize(text).replace("\u2581", " ").lstrip(" ")  # Drop the dummy prefix.

  def save(self, path: str) -> None:
    _atomic_write(path, self.model_proto)

  @classmethod
  def load(cls, path: str, origin: str | None = None) -> "Tokenizer":
    return cls(epath.Path(path).read_bytes(), origin or str(path))


def _atomic_write(path: str, data: bytes) -> None:
  if "://" in path:  # Object stores (gs://) write whole objects atomically.
    epath.Path(path).write_bytes(data)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def cache_key(fingerprint: str, settings: TokenizerSettings) -> str:
  blob = json.dumps([fingerprint, dataclasses.asdict(settings)], sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train(texts: Sequence[str], settings: TokenizerSettings, seed: int = 0) -> Tokenizer:
  """Trains SentencePiece on `texts`, or a seeded sample of settings.sample_size of them
  (deterministic for given inputs; Dataset.sample_texts draws the same sample from disk)."""
  texts = [t for t in texts if t]
  if len(texts) > settings.sample_size:
    texts = random.Random(seed).sample(texts, settings.sample_size)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=settings.vocab_size,
      model_type=settings.model_type, character_coverage=settings.character_coverage,
      normalization_rule_name=settings.normalization, input_sentence_size=0,
      shuffle_input_sentence=False, pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
      byte_fallback=settings.byte_fallback, hard_vocab_limit=False, num_threads=os.cpu_count() or 1, minloglevel=2,
      max_sentence_length=1 << 16)
  return Tokenizer(model.getvalue())


def get_or_train(texts_fn, fingerprint: str, settings: TokenizerSettings, cache_dir: str,
                 workdir: str | None = None, say=logging.info, writer: bool = True) -> Tokenizer:
  """The run's tokenizer: the workdir's copy, else the cache, else a newly trained one.

  Args:
    texts_fn: texts_fn(n) returns at most n training texts (called only to train).
    fingerprint: identifies the data (Dataset.fingerprint).
    settings: training settings.
    cache_dir: where trained models are cached across runs.
    workdir: the run directory; its tokenizer wins, and a copy is written there.
    say: where progress goes (a line before training, which can take a while).
    writer: whether this process writes the workdir's copy (process 0 of a multi-host run;
      the others read it once it is complete, else the cache, which yields the same model).
  """
  key = cache_key(fingerprint, settings)
  meta = {"key": key, "fingerprint": fingerprint, **dataclasses.asdict(settings)}
  if workdir:
    path = epath.Path(workdir) / "tokenizer.model"
    meta_path = epath.Path(workdir) / "tokenizer.json"
    if meta_path.exists():  # Written after the model: both are complete.
      stored = json.loads(meta_path.read_text())
      if stored["key"] != key:
        raise errors.ConfigError(
            f"{workdir} holds a tokenizer trained with {stored}, but the config asks for {meta}. "
            "Use a new workdir, or the settings of the old one.")
      return Tokenizer.load(str(path), f"the workdir's {path}")
  cache_dir = cache_dir if "://" in cache_dir else os.path.expanduser(cache_dir)
  cached = epath.Path(cache_dir) / f"{key}.model"
  if cached.exists():
    tok = Tokenizer.load(str(cached), f"cache {cached}")
  else:
    start = time.time()
    say(f"Training the tokenizer ({settings.model_type}, vocab {settings.vocab_size:,}) on up "
        f"to {settings.sample_size:,} sentences; cached for later runs at {cached}.")
    tok = train(texts_fn(settings.sample_size), settings)
    tok.save(str(cached))
    tok.origin = f"trained in {time.time() - start:.1f}s, cached at {cached}"
  logging.info("Tokenizer (vocab %d): %s.", tok.vocab_size, tok.origin)
  if workdir and writer:
    tok.save(os.path.join(workdir, "tokenizer.model"))
    _atomic_write(os.path.join(workdir, "tokenizer.json"), json.dumps(meta, indent=1).encode())
  return tok
