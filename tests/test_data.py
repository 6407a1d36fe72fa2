"""Data: deterministic builds, disjoint splits, tokenizer round trips and caching, user files."""

import os
import random

import pytest

from xformer import errors
from xformer.data import builders, datasets, synthetic, text_files, tokenizer
from xformer.data.checked_source import CheckedSource


def _build_small(path, monkeypatch):
  monkeypatch.setattr(synthetic, "SIZES", {"train": 300, "validation": 20, "test": 20,
                                           "test_long": 10})
  synthetic._short_pairs.cache_clear()
  builder = builders.XformerTranslation(data_dir=str(path), file_format="array_record")
  builder.download_and_prepare()
  return {s: [builder.as_data_source(s)[i] for i in range(n)]
          for s, n in synthetic.SIZES.items()}


def test_two_builds_produce_identical_examples(tmp_path, monkeypatch):
  first = _build_small(tmp_path / "a", monkeypatch)
  second = _build_small(tmp_path / "b", monkeypatch)
  synthetic._short_pairs.cache_clear()
  assert first == second
  assert len(first["train"]) == 300 and len(first["test_long"]) == 10


def test_splits_share_no_pair_and_long_split_is_longer(data_dir):
  ds = datasets.load({"dataset": "xformer_translation", "data_dir": data_dir})
  sources = {s: {src for src, _ in ds.examples(s)} for s in ds.splits}
  assert len(sources["train"]) >= 100_000
  names = list(sources)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert not sources[a] & sources[b], f"{a} and {b} share sentences"
  train_max = max(len(s.split()) for s in sources["train"])
  assert min(len(s.split()) for s in sources["test_long"]) > train_max


def test_synthetic_language_phenomena():
  pairs = list(synthetic.generate("validation"))[:2000]
  # Verb-second with a fronted time adverb: "... today ." -> adverb first in the target.
  adv = [(s, t) for s, t in pairs if s.split()[-2] == "today"]
  assert adv and all(t.split()[0] == synthetic.LEXICON["today"] for _, t in adv)
  # Numbers composed units-first: "twenty one" -> "<one> e <twenty>".
  assert synthetic._number(21)[1] == (f"{synthetic.LEXICON['one']} e "
                                      f"{synthetic.LEXICON['twenty']}")
  vocab = {w for s, _ in pairs for w in s.split()} | {w for _, t in pairs for w in t.split()}
  assert len(vocab) > 500


def test_pydoc_corpus_is_real_english_and_split_disjointly(data_dir):
  ds = datasets.load({"dataset": "xformer_pydoc", "data_dir": data_dir})
  texts = {s: {text for (text,) in ds.examples(s)} for s in ds.splits}
  assert len(texts["train"]) > 1000 and texts["validation"] and texts["test"]
  assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
  assert any(" the " in t for t in texts["test"])


def test_tokenizer_round_trips_both_corpora(translation_data, data_dir):
  ds, tok = translation_data
  lines = [text for pair in ds.examples("test") for text in pair]
  for line in lines:
    assert tok.decode(tok.encode(line)) == tok.normalize(line)
  assert tok.decode(tok.encode(lines[0]) + [tokenizer.EOS_ID, 5, 6]) == tok.normalize(lines[0])
  lm = datasets.load({"dataset": "xformer_pydoc", "data_dir": data_dir})
  lm_tok = tokenizer.train(lm.sample_texts("train", 10**9),
                           tokenizer.TokenizerSettings(vocab_size=1000))
  for (line,) in lm.examples("test"):  # Unseen characters too: byte fallback covers them.
    assert lm_tok.decode(lm_tok.encode(line)) == lm_tok.normalize(line)


def test_streamed_tokenizer_sample_is_the_in_memory_sample(translation_data):
  """Dataset.sample_texts reads only its sample, in sorted chunks, yet draws exactly what
  random.sample over every string of the split (both sides, in order) would, in that order."""
  ds, _ = translation_data
  every = [text for pair in ds.examples("validation") for text in pair]  # 4,000 strings
  assert ds.sample_texts("validation", 10**6) == every
  assert ds.sample_texts("validation", 1234, chunk=100) == random.Random(0).sample(every, 1234)
  assert ds.sample_texts("validation", 1234, seed=1) != ds.sample_texts("validation", 1234)


def test_tokenizer_cache_and_workdir_copy(tmp_path, monkeypatch):
  texts = [f"sentence number {i} with some words" for i in range(300)]
  settings = tokenizer.TokenizerSettings(vocab_size=400, model_type="bpe")
  first = tokenizer.get_or_train(lambda n: texts[:n], "fp", settings, str(tmp_path / "cache"),
                                 str(tmp_path / "run"))
  monkeypatch.setattr(tokenizer, "train", lambda *a, **k: pytest.fail("trained twice"))
  again = tokenizer.get_or_train(lambda n: texts[:n], "fp", settings, str(tmp_path / "cache"),
                                 str(tmp_path / "run2"))
  assert again.model_proto == first.model_proto
  assert os.path.exists(tmp_path / "run2" / "tokenizer.model")
  other = tokenizer.TokenizerSettings(vocab_size=410, model_type="bpe")
  with pytest.raises(ValueError, match="holds a tokenizer trained with"):
    tokenizer.get_or_train(lambda n: texts[:n], "fp", other, str(tmp_path / "cache"),
                           str(tmp_path / "run"))


def test_tokenizer_workdir_copy_has_one_writer(tmp_path, monkeypatch):
  """Multi-host: only process 0 writes the workdir's copy, and a reader takes it only once its
  settings file (written last) is there; another host read a model without its settings
  mid-write and died (FileNotFoundError) before."""
  texts = [f"sentence number {i} with some words" for i in range(300)]
  settings = tokenizer.TokenizerSettings(vocab_size=400, model_type="bpe")
  cache, run = str(tmp_path / "cache"), tmp_path / "run"
  tok = tokenizer.get_or_train(lambda n: texts[:n], "fp", settings, cache, str(run), writer=False)
  assert not run.exists()
  run.mkdir()
  (run / "tokenizer.model").write_bytes(b"half a model")  # Process 0 is between its two writes.
  monkeypatch.setattr(tokenizer, "train", lambda *a, **k: pytest.fail("trained twice"))
  again = tokenizer.get_or_train(lambda n: texts[:n], "fp", settings, cache, str(run),
                                 writer=False)
  assert again.model_proto == tok.model_proto and "cache" in again.origin
  assert (run / "tokenizer.model").read_bytes() == b"half a model"


def _write(path, data: bytes):
  path.write_bytes(data)
  return str(path)


def test_user_parallel_files_skip_and_count_bad_lines(tmp_path):
  src = _write(tmp_path / "a.en", b"hello world\n\nbad \xff byte\n" + b"x" * 50 + b"\nfine\n")
  tgt = _write(tmp_path / "a.de", b"hallo welt\nleer\nschlecht\nlang\ngut\n")
  skips = text_files.SkipCounts()
  pairs = list(text_files.read_parallel(src, tgt, max_chars=40, policy="skip", skips=skips))
  assert pairs == [("hello world", "hallo welt"), ("fine", "gut")]
  assert skips.counts == {"empty": 1, "not UTF-8": 1, "too long": 1}
  with pytest.raises(text_files.BadLineError, match=r"a\.en, line 2: empty line"):
    list(text_files.read_parallel(src, tgt, max_chars=40, policy="error"))
  bad = _write(tmp_path / "c.txt", b"good line\nbad \xff byte\n")
  with pytest.raises(text_files.BadLineError, match=r"c\.txt, line 2: not valid UTF-8"):
    list(text_files.read_text(bad, policy="error"))
  short = _write(tmp_path / "b.de", b"one line\n")
  with pytest.raises(text_files.BadLineError, match="differ in length"):
    list(text_files.read_parallel(src, short))


def test_user_files_build_as_tfds_datasets(tmp_path):
  tsv = _write(tmp_path / "train.tsv", b"a b\tc d\n\t\nno tab here\ne f\tg h\n")
  dev = _write(tmp_path / "dev.tsv", b"x\ty\n")
  text = _write(tmp_path / "lm.txt", b"first line\n\n\xfe\nsecond line\n")
  ds = datasets.load({"dataset": "parallel_files", "data_dir": str(tmp_path / "tfds"),
                      "files": {"train": [tsv], "validation": [dev]}})
  assert [ds.example("train", i) for i in range(len(ds.split("train")))] == [
      ("a b", "c d"), ("e f", "g h")]
  lm = datasets.load({"dataset": "text_files", "data_dir": str(tmp_path / "tfds"),
                      "files": {"train": text}})
  assert sorted(lm.example("train", i)[0] for i in range(2)) == ["first line", "second line"]
  with pytest.raises(ValueError, match="does not exist"):
    datasets.load({"dataset": "text_files", "data_dir": str(tmp_path),
                   "files": {"train": str(tmp_path / "missing.txt")}})


def test_real_dataset_without_network_fails_clearly(tmp_path):
  with pytest.raises(datasets.DataUnavailableError, match="not prepared .*data.download=False"):
    datasets.load({"dataset": "wmt14_translate/de-en", "data_dir": str(tmp_path),
                   "download": False})
  with pytest.raises(KeyError, match="Valid names: .*xformer_translation"):
    datasets.load({"dataset": "wmt15_translate/de-en"})


def test_a_dataset_another_process_prepared_meanwhile_is_used(tmp_path, monkeypatch):
  # Two processes of one run prepare at once; the one that finishes second fails its rename.
  tsv = _write(tmp_path / "train.tsv", b"a b\tc d\n")
  real = datasets.downloads.download_and_prepare

  def loses_the_race(builder, raw_dir):
    real(builder, raw_dir)  # The other process's complete dataset is in place...
    raise FileExistsError("Cannot rename incomplete.X: destination already exists")

  monkeypatch.setattr(datasets.downloads, "download_and_prepare", loses_the_race)
  ds = datasets.load({"dataset": "parallel_files", "data_dir": str(tmp_path / "tfds"),
                      "files": {"train": [tsv]}})
  assert ds.example("train", 0) == ("a b", "c d")
  monkeypatch.setattr(datasets.downloads, "download_and_prepare",
                      lambda b, r: (_ for _ in ()).throw(OSError("disk full")))
  with pytest.raises(datasets.DataUnavailableError, match="disk full"):  # A real failure.
    datasets.load({"dataset": "parallel_files", "data_dir": str(tmp_path / "tfds2"),
                   "files": {"train": [tsv]}})


def test_a_failing_record_read_names_its_shard():
  """CheckedSource: a batched read that fails is retried record by record, and the failing
  record's file is found from the shards' record counts (5 in a.rec, 4 in b.rec)."""
  class Damaged(list):
    def __getitem__(self, i):
      if i == 6:
        raise RuntimeError("Corrupted Riegeli/records file: chunk header hash mismatch\nmore")
      return super().__getitem__(i)

    def __getitems__(self, rows):
      return [self[i] for i in rows]

  source = CheckedSource(Damaged(range(9)), "train", [("a.rec", 5), ("b.rec", 4)])
  assert [source.file_of(i) for i in (0, 4, 5, 8)] == ["a.rec", "a.rec", "b.rec", "b.rec"]
  assert source.__getitems__([0, 4, 5]) == [0, 4, 5] and source[8] == 8 == source[-1]
  with pytest.raises(IndexError):  # Not "damaged": iteration ends there.
    source[9]  # pylint: disable=pointless-statement
  with pytest.raises(errors.StorageError, match=r"^Reading record 6 of the 'train' split "
                     r"failed: Corrupted Riegeli/records file: chunk header hash mismatch "
                     r"\(file b\.rec\)\. The data file is damaged"):
    source.__getitems__([2, 6])
