"""Peak host memory of tokenizer training on a 1M-line text file, by tokenizer.sample_size.

  python benchmarks/tokenizer_memory.py [--lines=1000000]

Writes a `--lines` line file of synthetic prose (about 20 words a line), prepares it as the
user-files LM dataset (array_record, streamed line by line), then trains the tokenizer the way a
run does (`Dataset.sample_texts` draws a seeded sample reading only the sampled records, then
sentencepiece trains on it) in a fresh process per sample size, and reports each process's
peak RSS (VmHWM) and wall time, beside a baseline process that only imports and opens the
dataset. Memory should follow the sample size, not the file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from xformer.data import datasets, tokenizer
ds = datasets.load(json.loads({cfg!r}))
start = time.time()
size = {size}
if size:
  texts = ds.sample_texts("train", size)
  tokenizer.train(texts, tokenizer.TokenizerSettings(vocab_size=8000, model_type="bpe",
                                                     sample_size=size))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child started by a
# big parent would report the parent's peak.
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({{"rss_mib": hwm, "seconds": time.time() - start}}))
"""


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--lines", type=int, default=1_000_000)
  p.add_argument("--sizes", default="0,100000,1000000", help="0: baseline (no training).")
  args = p.parse_args(argv)
  from xformer.data import datasets, synthetic  # noqa: PLC0415
  root = tempfile.mkdtemp(prefix="xformer_tok_mem_")
  path = os.path.join(root, "train.txt")
  rng = random.Random(0)
  with open(path, "w") as f:
    for _ in range(args.lines):
      f.write(" ".join(synthetic.sentence(rng, 0, max_adj=2)[0] for _ in range(2)) + "\n")
  cfg = {"dataset": "text_files", "files": json.dumps({"train": [path], "validation": [path]}),
         "data_dir": os.path.join(root, "tfds"), "on_bad_line": "skip", "max_chars": 10_000}
  datasets.load(cfg)  # Prepare once (streamed), outside the measured processes.
  size_mib = os.path.getsize(path) / 2**20
  print(f"{args.lines:,} lines, {size_mib:.0f} MiB of text")
  print("| sample_size | peak RSS (MiB) | seconds |\n|---|---|---|")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for size in (int(s) for s in args.sizes.split(",")):
    code = CHILD.format(repo=repo, cfg=json.dumps(cfg), size=size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    label = "baseline (open only)" if not size else f"{size:,}"
    print(f"| {label} | {res['rss_mib']:.0f} | {res['seconds']:.1f} |")


if __name__ == "__main__":
  main()
