"""Prepare (once) and look at a config's data: the dataset as array_record and the tokenizer.

  python -m xformer.data.prepare --config=configs/wmt_base.py --config.data.data_dir=gs://B/tfds
  python -m xformer.data.prepare --config=configs/lm1b.py --config.data.raw_dir=/mnt/lm1b_raw

Real datasets (WMT14, lm1b) are downloaded and converted by their TFDS builders the first time,
with progress bars; `data.raw_dir` serves the raw files from a directory instead of the network
(xformer/data/downloads.py). The tokenizer is trained once and cached under the data_dir, so a
pod's hosts (and every later run) find it there. Then it prints the split sizes, the tokenizer,
token-length statistics and a few examples as the model sees them. Training never needs more
than this command installed (no TensorFlow).
"""

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from xformer import config_lib, tasks
from xformer.data import datasets, pipeline
from xformer.data import inputs as inputs_lib
from xformer.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_NUM = flags.DEFINE_integer("num_examples", 3, "Examples to print.")
flags.mark_flags_as_required(["config"])


@cli.user_errors
def main(argv):
  del argv
  config = _CONFIG.value
  config_lib.validate(config)
  datasets.show_progress = True  # Downloads and conversion of real datasets take a while.
  inputs = inputs_lib.Inputs.of_config(config, tasks.get(config.task), workdir=None)
  dataset, tok = inputs.dataset, inputs.tokenizer
  print(f"dataset {config.data.dataset} ({dataset.kind}) in {inputs.dataset_dir}, ready in "
        f"{inputs.seconds['dataset']:.1f}s:")
  for name, source in dataset.splits.items():
    print(f"  {name:12s} {len(source):>11,} examples")
  print(f"tokenizer: {config.tokenizer.model_type}, vocab {tok.vocab_size:,}, {tok.origin}, "
        f"ready in {inputs.seconds['tokenizer']:.1f}s")
  split = config.data.eval_split
  encoded = pipeline.EncodedSource(dataset.split(split), tok, dataset.keys, eager=True)
  for k, key in enumerate(dataset.keys):
    lengths = np.array([len(encoded[i][k]) for i in range(len(encoded))])
    print(f"{split} {key} tokens: mean {lengths.mean():.1f}, max {lengths.max()}")
  for i in range(min(_NUM.value, len(encoded))):
    print(f"--- {split}[{i}]")
    for key, text, ids in zip(dataset.keys, dataset.example(split, i), encoded[i]):
      pieces = [tok.sp.id_to_piece(int(t)) for t in ids]
      print(f"  {key}: {text}\n  {key} pieces ({len(ids)}): {' '.join(pieces)}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
