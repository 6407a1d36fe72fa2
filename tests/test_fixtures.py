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
  for scored, logprobs in zip(b.score(want["sources"], want["targets"]), want["logprobs"]):
    np.testing.assert_allclose(scored.logprobs, logprobs, atol=1e-4)
  assert b.translate(want["sources"] + ["she thanks a poet ."], beam=1) == want["greedy"]
  assert b.translate(want["sources"] + ["she thanks a poet ."], beam=2) == want["beam2"]


def test_v0_lm_run_loads_and_scores_as_before(copy):
  want = EXPECTED["v0_lm"]
  b = xformer.load(str(copy("v0_lm")))
  assert b.step == 200 and b.model_config.posemb == "rope"
  assert _param_sum(b.params) == pytest.approx(want["param_sum"], rel=1e-6)
  for scored, logprobs in zip(b.score(want["texts"]), want["logprobs"]):
    np.testing.assert_allclose(scored.logprobs, logprobs, atol=1e-4)
  assert [b.generate("the poet", max_len=16, temperature=0.0)] == want["greedy"]
