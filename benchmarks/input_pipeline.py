"""Host-side input throughput: packed 96 x 256 translation batches per second, WMT-shaped.

  python benchmarks/input_pipeline.py [--pairs=30000] [--batches=40] [--rounds=3]

The data: `--pairs` synthetic sentence pairs of WMT14 en-de's shape (about 25 words a side),
written as the user-files dataset (array_record through its real TFDS builder), with a
BPE 8,000 tokenizer trained on it. Each variant builds the real training iterator of
xformer/data/pipeline.py (shuffle, frame, first-fit packing, batching, prefetch thread) and
times `--batches` batches after a 5-batch warm-up; variants alternate for `--rounds` rounds and
the table shows medians:

  lazy   read and tokenize each example when the pipeline asks for it (data.pretokenize=False,
         what wmt_base and lm1b did);
  eager  tokenize the whole split into memory first (data.pretokenize=True; not for 4.5M pairs);
  cache  the split's token ids written once to a memory-mapped cache (data.token_cache=True,
         xformer/data/token_cache.py); the build time is reported separately.

The last line is `batches_per_s=<number>` for the variant the WMT and lm1b configs use (cache).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xformer import tasks  # noqa: E402
from xformer.data import datasets, pipeline, synthetic, token_cache  # noqa: E402
from xformer.data import tokenizer as tokenizer_lib  # noqa: E402

BATCH, LENGTH = 96, 256


def make_data(root: str, pairs: int) -> dict:
  """WMT-shaped pairs (three synthetic sentences a side, ~25 words) as the user-files dataset."""
  rng = random.Random(0)
  path = os.path.join(root, "train.tsv")
  with open(path, "w") as f:
    for _ in range(pairs):
      parts = [synthetic.sentence(rng, 0, max_adj=2) for _ in range(3)]
      f.write(" ".join(p[0] for p in parts) + "\t" + " ".join(p[1] for p in parts) + "\n")
  files = {"train": [path], "validation": [path], "test": [path]}
  return {"dataset": "parallel_files", "files": json.dumps(files),
          "data_dir": os.path.join(root, "tfds"), "source_lang": "en", "target_lang": "de",
          "on_bad_line": "skip", "max_chars": 10_000}


def make_iterator(source, task) -> object:
  it, _ = pipeline.train_iterator(source, task=task, lengths=pipeline.Lengths(LENGTH, LENGTH),
                                  batch_size=BATCH, seed=0, pack=True)
  return it


def time_batches(it, n: int) -> float:
  for _ in range(5):  # Warm-up: the prefetch thread and the first packing bins.
    next(it)
  start = time.perf_counter()
  for _ in range(n):
    next(it)
  return n / (time.perf_counter() - start)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--pairs", type=int, default=30_000)
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args(argv)
  root = tempfile.mkdtemp(prefix="xformer_input_bench_")
  dataset = datasets.load(make_data(root, args.pairs))
  settings = tokenizer_lib.TokenizerSettings(vocab_size=8000, model_type="bpe")
  tok = tokenizer_lib.train(dataset.sample_texts("train", 100_000), settings)
  split, task = dataset.split("train"), tasks.get("translation")
  ids = [len(x) for x in tok.encode_batch([dataset.example("train", i)[0] for i in range(2000)])]
  start = time.perf_counter()
  cache_dir = os.path.join(root, "cache")
  token_cache.build(split, tok, dataset.keys, cache_dir)
  build_s = time.perf_counter() - start
  start = time.perf_counter()
  eager = pipeline.EncodedSource(split, tok, dataset.keys, eager=True)
  eager_s = time.perf_counter() - start
  sources = {"lazy": pipeline.EncodedSource(split, tok, dataset.keys, eager=False),
             "eager": eager, "cache": token_cache.TokenCache(cache_dir)}
  rates = {name: [] for name in sources}
  for _ in range(args.rounds):
    for name, source in sources.items():
      rates[name].append(time_batches(make_iterator(source, task), args.batches))
  print(f"{args.pairs:,} pairs, source tokens/pair mean {statistics.mean(ids):.1f}; packed "
        f"{BATCH} x {LENGTH} batches; {args.rounds} alternating rounds of {args.batches}")
  print(f"one-time cost: cache build {build_s:.1f}s ({args.pairs / build_s:,.0f} pairs/s), "
        f"eager tokenization {eager_s:.1f}s")
  print("| variant | batches/s (median) | rounds |\n|---|---|---|")
  for name, values in rates.items():
    print(f"| {name} | {statistics.median(values):.2f} | "
          f"{', '.join(f'{v:.2f}' for v in values)} |")
  print(f"batches_per_s={statistics.median(rates['cache']):.2f}")


if __name__ == "__main__":
  main()
