"""Checkpoints written by older code still load and compute what they computed then.

tests/fixtures/v0_* are two tiny runs (translation with sinusoids, an LM with RoPE) trained and
saved by xformer at commit dd05ba3, before the config layout and the task layer changed; their
outputs at that commit are in v0_expected.json (tests/fixtures/make_v0_runs.py made both).
A change that breaks reading old configs or parameter trees fails here.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import xformer
from xformer import errors

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
with open(os.path.join(FIXTURES, "v0_expected.json")) as _f:
  EXPECTED = json.load(_f)


@pytest.fixture(name="copy")
def _copy(tmp_path):
  """A private copy of a fixture run (loading must not write into the repository)."""
  def copy(name):
    return shutil.copytree(os.path.join(FIXTURES, name), tmp_path / name)
  return copy


def _param_sum(params):
  return float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(params)))


def test_v0_translation_run_loads_and_translates_as_before(copy):
  want = EXPECTED["v0_translation"]
  b = xformer.load(str(copy("v0_translation")))
  assert b.step == 200 and b.model_config.posemb == "sinusoidal"
  assert _param_sum(b.params) == pytest.approx(want["param_sum"], rel=1e-6)
  scored = b.score(want["sources"], want["targets"])
  assert len(scored) == len(want["logprobs"]) == 2
  for s, logprobs in zip(scored, want["logprobs"]):
    np.testing.assert_allclose(s.logprobs, logprobs, atol=1e-4)
  assert b.translate(want["sources"] + ["she thanks a poet ."], beam=1) == want["greedy"]
  assert b.translate(want["sources"] + ["she thanks a poet ."], beam=2) == want["beam2"]


def test_v0_lm_run_loads_and_scores_as_before(copy):
  want = EXPECTED["v0_lm"]
  b = xformer.load(str(copy("v0_lm")))
  assert b.step == 200 and b.model_config.posemb == "rope"
  assert _param_sum(b.params) == pytest.approx(want["param_sum"], rel=1e-6)
  scored = b.score(want["texts"])
  assert len(scored) == len(want["logprobs"]) == 3
  for s, logprobs in zip(scored, want["logprobs"]):
    np.testing.assert_allclose(s.logprobs, logprobs, atol=1e-4)
  assert [b.generate("the poet", max_len=16, temperature=0.0)] == want["greedy"]


with open(os.path.join(FIXTURES, "v1_expected.json")) as _f:
  EXPECTED_V1 = json.load(_f)["v1_translation"]


def test_v1_run_of_the_flat_layout_loads_and_translates_as_before(copy):
  """Written at 712fd97, before the package moved into rooms (xPos then lived in
  xformer/positional_recent.py)."""
  want = EXPECTED_V1
  b = xformer.load(str(copy("v1_translation")))
  assert b.step == 200 and b.model_config.posemb == "xpos"
  assert _param_sum(b.params) == pytest.approx(want["param_sum"], rel=1e-6)
  scored = b.score(want["sources"], want["targets"])
  assert len(scored) == len(want["logprobs"]) == 2
  for s, logprobs in zip(scored, want["logprobs"]):
    np.testing.assert_allclose(s.logprobs, logprobs, atol=1e-4)
  assert b.translate(want["sources"] + ["she thanks a poet ."], beam=1) == want["greedy"]
  assert b.translate(want["sources"] + ["she thanks a poet ."], beam=2) == want["beam2"]


@pytest.mark.slow
def test_the_flat_layout_run_resumes_under_todays_code(copy, tmp_path):
  """Its own saved config (the embedded dataset, rebuilt in a fresh data_dir), three more steps
  under today's code: a checkpoint, an iterator state and an optimiser state of the flat layout.
  (The v0 runs read files whose fingerprint holds their paths and mtimes: those resume only on
  the machine that wrote them, by design.)"""
  from xformer import train  # pylint: disable=import-outside-toplevel
  workdir = str(copy("v1_translation"))
  old = xformer.load(workdir)
  config = old.config
  config.unlock()
  config.update(num_train_steps=203, checkpoint_every_steps=3, log_every_steps=1,
                async_checkpoints=False)
  config.data.data_dir = str(tmp_path / "tfds")
  train.train_and_evaluate(config, workdir)
  resumed = xformer.load(workdir)
  assert resumed.step == 203
  assert _param_sum(resumed.params) != pytest.approx(_param_sum(old.params), rel=1e-7)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f if '"train/loss"' in line]
  assert steps == [201, 202, 203]  # Continued from 200, did not start over.


def test_a_recorded_module_that_moved_is_found_through_the_alias_table():
  from xformer.workdir import record  # pylint: disable=import-outside-toplevel
  saved = json.loads(json.dumps(record.to_saved(_tiny_config("xpos"))))
  assert saved["registered_by"]["posemb"] == "xformer.positional.rotary"
  saved["registered_by"] = {"posemb": "xformer.positional_recent", "task": "xformer.tasks.lm"}
  assert record.from_saved(saved).model.posemb == "xpos"
  saved["registered_by"]["posemb"] = "xformer.no_such_module"
  with pytest.raises(errors.UnknownNameError, match="xformer.no_such_module"):
    record.from_saved(saved)


def _tiny_config(posemb):
  from xformer import config_lib  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(FIXTURES), "..", "configs", "lm_default.py")
  return config_lib.load_file(path, overrides=[f"model.posemb={posemb}"])
