"""Run by tests/test_cross_version.py under either environment (pins or floors): trains a tiny
run, or loads one and prints what it computes, as JSON on the last line of stdout.

  python tests/cross_version_probe.py train WORKDIR DATA_DIR
  python tests/cross_version_probe.py load WORKDIR
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["the poet sings .", "a quiet castle paints the mirror today ."]
TARGETS = ["lo poet singat .", "una castel quieta paintat lan mirror hodie ."]
TINY = ["model.d_model=32", "model.num_heads=2", "model.d_ff=64", "model.num_encoder_layers=1",
        "model.num_decoder_layers=1", "tokenizer.vocab_size=400", "batch_size=8",
        "num_train_steps=30", "checkpoint_every_steps=30", "log_every_steps=10",
        "eval_every_steps=1000", "eval_examples=50", "test_bleu_examples=-1",
        "num_samples_to_print=0", "async_checkpoints=False", "model.posemb=rope"]


def train(workdir: str, data_dir: str) -> None:
  cmd = [sys.executable, "-m", "xformer.main", f"--config={REPO}/configs/default.py",
         f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
         *[f"--config.{o}" for o in TINY]]
  subprocess.run(cmd, check=True, cwd=REPO)


def load(workdir: str) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import xformer  # pylint: disable=import-outside-toplevel
  b = xformer.load(workdir)
  return {"versions": {"jax": jax.__version__,
                       "flax": __import__("flax").__version__,
                       "orbax": __import__("orbax.checkpoint").checkpoint.__version__},
          "step": b.step,
          "greedy": b.translate(SOURCES, beam=1),
          "beam2": b.translate(SOURCES, beam=2),
          "logprobs": [s.logprobs.tolist() for s in b.score(SOURCES, TARGETS)]}


if __name__ == "__main__":
  if sys.argv[1] == "train":
    train(sys.argv[2], sys.argv[3])
    print(json.dumps({"trained": sys.argv[2]}))
  else:
    print(json.dumps(load(sys.argv[2])))
