"""A third kind of run is one file: this one. `PrefixLM` (translation as a decoder-only LM that
reads "source EOS target" and is trained on the target only) and a positional encoding are
registered here and nowhere else, then trained, evaluated, saved and reloaded in a fresh process
through the ordinary entry points.
"""

import os
import subprocess
import sys

from conftest import small_config
import numpy as np
import pytest

import xformer
from xformer import errors, positional, tasks, train
from xformer.data import pipeline
from xformer.data.tokenizer import BOS_ID, EOS_ID
from xformer.model import DecoderOnlyLM, decode
from xformer.runtime import metric_writer
from xformer.tasks import base

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@tasks.register("prefix_lm")
class PrefixLM(base.Task):
  """Decoder-only translation: the row is BOS source EOS target; the loss covers the target."""

  name = "prefix_lm"
  data_kind = "translation"
  default_dataset = "xformer_translation"

  def build_model(self, cfg):
    return DecoderOnlyLM(cfg)

  def apply(self, model, params, batch, *, deterministic=True, rng=None, **kwargs):
    return model.apply({"params": params}, batch["targets_in"],
                       positions=batch["targets_positions"],
                       segments=batch["targets_segment_ids"], deterministic=deterministic,
                       rngs=None if rng is None else {"dropout": rng}, **kwargs)

  def loss_inputs(self, batch):
    return batch["targets"], (batch["targets_segment_ids"] > 0) & (batch["target_part"] > 0)

  def features(self, ids, lengths, fit):
    src, tgt = fit(ids[0], lengths.source - 1), fit(ids[1], lengths.target - 1)
    if src is None or tgt is None:
      return None
    row = np.concatenate([src, [EOS_ID], tgt, [EOS_ID]]).astype(np.int32)
    part = np.concatenate([np.zeros(len(src) + 1), np.ones(len(tgt) + 1)]).astype(np.int32)
    return {"targets_in": np.concatenate([[BOS_ID], row[:-1]]).astype(np.int32),
            "targets": row, "target_part": part}

  def feature_lengths(self, lengths):
    n = lengths.source + lengths.target
    return {"targets_in": n, "targets": n, "target_part": n}

  def longest_position(self, data, decode_settings):
    return data.max_source_len + max(data.max_target_len, decode_settings.max_extra)

  def score_examples(self, tokenizer, sources, targets):
    return [(tokenizer.encode(s), tokenizer.encode(t)) for s, t in zip(sources, targets)]

  def translate(self, bundle, sentences, *, beam=1, max_extra=None, **kwargs):
    del beam, kwargs  # Greedy only, for this demonstration.
    prompts = [[BOS_ID] + bundle.tokenizer.encode(s) + [EOS_ID] for s in sentences]
    rows, lengths = bundle.rows(prompts)
    max_len = rows.shape[1] + (max_extra or bundle.config.decode.max_extra)
    out = np.asarray(decode.sample_lm(bundle.model, bundle.params, rows,
                                      np.asarray(lengths + [1] * (len(rows) - len(lengths))),
                                      None, max_len, temperature=0.0))
    return [bundle.tokenizer.decode(out[r, n:]) for r, n in enumerate(lengths)]


@positional.register("halved_sinusoidal_test_tasks")
class HalvedSinusoidal(positional.PositionalEncoding):
  """Sinusoids at half amplitude: an encoding only this module defines."""

  HOOKS = frozenset({positional.ADD})

  def embed(self, positions):
    return 0.5 * positional.sinusoidal(positions, self.d_model)


def _config(small_files, **overrides):
  return small_config(small_files, task="prefix_lm", **{
      "model.posemb": "halved_sinusoidal_test_tasks", "model.max_len": 96, **overrides})


def test_a_registered_task_trains_evaluates_and_reloads(small_files, tmp_path):
  workdir = str(tmp_path / "prefix_lm")
  final = train.train_and_evaluate(_config(small_files, num_train_steps=12), workdir)
  # It learned: the target-only loss fell from uniform over the 400 pieces (ln 400 = 5.99).
  losses = [m["train/loss"] for m in metric_writer.read_metrics(workdir) if "train/loss" in m]
  assert losses[0] > 5.0 and losses[-1] < losses[0] - 1.0, losses
  assert final["test/perplexity"] < 400 / 3, final  # Uniform: 400.
  # The loss counts target tokens only (target + EOS), never the source prefix.
  run, inputs = train.build(_config(small_files))
  test = inputs.encoded("test")
  assert final["test/tokens"] == sum(min(len(test[i][1]) + 1, 32) for i in range(len(test)))
  b = xformer.load(workdir)
  assert isinstance(b.run.task, PrefixLM) and b.model_config.posemb.startswith("halved")
  scored = b.score(["the poet sings ."], ["lo poet singat ."])
  assert len(scored[0].ids) == len(b.tokenizer.encode("lo poet singat .")) + 1
  assert scored[0].pieces[-1] == "</s>" and np.all(scored[0].logprobs < 0)
  assert isinstance(b.translate("the poet sings .", beam=1), str)
  with pytest.raises(errors.ConfigError, match="needs a language model"):
    b.generate("x")
  # A packed batch of this task keeps its extra feature aligned with its rows.
  batch = next(inputs.train_iterator()[0])
  assert set(batch) == {"targets_in", "targets", "target_part", "targets_segment_ids",
                        "targets_positions"}
  assert not np.any(batch["target_part"][batch["targets_segment_ids"] == 0])
  del run


def test_load_imports_the_module_that_registered_the_task_and_encoding(small_files, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_config(small_files, num_train_steps=2), workdir)
  code = ("import xformer; b = xformer.load(%r); print(type(b.run.task).__name__, "
          "b.model_config.posemb)" % workdir)
  env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["PrefixLM", "halved_sinusoidal_test_tasks"]
  env["PYTHONPATH"] = ""  # The module is nowhere to be found: the error says which and how.
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode != 0
  assert "registered by the module 'test_tasks'" in out.stderr, out.stderr[-2000:]


def test_frame_truncates_both_parts_and_counts(small_files):
  task = tasks.get("prefix_lm")
  counter = pipeline.OverlongCounter()
  frame = pipeline.Frame(task, pipeline.Lengths(4, 4), "truncate", counter)
  ex = frame.map((np.arange(10, 20), np.arange(30, 33)))
  assert list(ex["targets"]) == [10, 11, 12, EOS_ID, 30, 31, 32, EOS_ID]
  assert list(ex["target_part"]) == [0, 0, 0, 0, 1, 1, 1, 1]
  assert counter.summary()["truncated_overlong"] == 1
