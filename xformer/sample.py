"""Sample continuations from a trained decoder-only LM.

  python -m xformer.sample --workdir=runs/lm --prompt="The with statement" --num_samples=3 \
      --temperature=0.8 --top_p=0.95 --seed=1

Prints one continuation per sample (prompt first), separated by blank lines. Same seed, same
samples.
"""

from absl import app, flags

from xformer.runtime import cli, host_memory
from xformer.workdir import bundle

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (or one checkpoint step dir).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue ('' starts from BOS).")
_NUM = flags.DEFINE_integer("num_samples", 1, "Samples to draw.")
_MAX_LEN = flags.DEFINE_integer("max_len", 128, "Tokens in all, prompt included.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0: off).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flag_as_required("workdir")


@cli.user_errors
def main(argv):
  del argv
  b = bundle.load(_WORKDIR.value, step=_STEP.value)
  texts = b.generate([_PROMPT.value] * _NUM.value, max_len=_MAX_LEN.value,
                     temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
                     seed=_SEED.value)
  for text in texts:
    print(f"{_PROMPT.value}{' ' if _PROMPT.value and text else ''}{text}\n", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_tunables()
  app.run(main, flags_parser=cli.parse_flags)
