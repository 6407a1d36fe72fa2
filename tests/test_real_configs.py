"""Every shipped accelerator config, end to end, offline, on real-format data.

The real TFDS builders (wmt14_translate/de-en, lm1b) prepare array_record datasets from fake raw
files in their download layouts (tests/realdata.py) through `python -m xformer.data.prepare`;
the loader cannot tell them from the real thing (same name, config, version, features, keys,
splits). The configs run as shipped except for model size, batch and steps: train, resume,
evaluate with BLEU (beam search), average, evaluate the average, load in a notebook.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import realdata

import xformer
from xformer import config_lib, train
from xformer.evaluation import evaluator
from xformer.runtime import metric_writer
from xformer.workdir import averaging

pytestmark = pytest.mark.slow  # End-to-end: CI's second tier.

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SHRINK = ["model.d_model=32", "model.num_heads=2", "model.d_ff=64",
          "model.num_encoder_layers=1", "model.num_decoder_layers=1", "batch_size=8",
          "eval_batch_size=16", "log_every_steps=1", "checkpoint_every_steps=2",
          "eval_every_steps=2"]


def _prepare(config: str, data_dir: str, raw_dir: str) -> str:
  """`python -m xformer.data.prepare` in a fresh process, which must never import TensorFlow."""
  code = ("import runpy, sys\n"
          "try:\n  runpy.run_module('xformer.data.prepare', run_name='__main__')\n"
          "finally:\n  assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
  out = subprocess.run([sys.executable, "-c", code, f"--config={config}",
                        f"--config.data.data_dir={data_dir}", f"--config.data.raw_dir={raw_dir}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("real")
  data_dir = str(root / "tfds")
  out = _prepare("configs/wmt_base.py", data_dir, realdata.write_wmt14_raw(str(root / "wmt")))
  assert "train              1,500 examples" in out and "test                  60" in out
  out = _prepare("configs/lm1b.py", data_dir, realdata.write_lm1b_raw(str(root / "lm1b")))
  assert "train              2,000 examples" in out and "test                 100" in out
  return data_dir


def _config(path, data_dir, *overrides, arg=None):
  return config_lib.load_file(path, arg, SHRINK + [f"data.data_dir={data_dir}",
                                                   "data.download=False", *overrides])


def test_wmt_base_trains_resumes_evaluates_averages_and_loads(data_dir, tmp_path):
  workdir = str(tmp_path / "wmt_base")
  train.train_and_evaluate(
      _config("configs/wmt_base.py", data_dir, "num_train_steps=2", "eval_every_steps=1"),
      workdir)
  final = train.train_and_evaluate(
      _config("configs/wmt_base.py", data_dir, "num_train_steps=4", "test_bleu_examples=16"),
      workdir)  # Resumes at step 2.
  steps = [m["step"] for m in metric_writer.read_metrics(workdir) if "train/loss" in m]
  assert steps == [1, 2, 3, 4]
  assert 0 <= final["test/bleu"] <= 100 and "test/bleu_tokenized" in final
  evals = [m for m in metric_writer.read_metrics(workdir) if "validation/bleu" in m]
  assert [m["step"] for m in evals] == [1]  # During training, beam 4 (config.decode).
  averaged = str(tmp_path / "avg")
  assert averaging.average_run(workdir, averaged, last=2) == 4
  # The average is the mean of the step-2 and step-4 parameters, leaf by leaf.
  ends = [xformer.load(workdir, step=s).params for s in (2, 4)]
  mean = jax.tree.map(lambda a, b: (np.asarray(a, np.float32) + np.asarray(b, np.float32)) / 2,
                      *ends)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), *ends)
  assert max(jax.tree.leaves(moved)) > 0  # Two steps apart: the mean is not either end.
  jax.tree.map(lambda got, want: np.testing.assert_allclose(np.asarray(got, np.float32), want,
                                                            rtol=1e-6, atol=1e-7),
               xformer.load(averaged).params, mean)
  report = evaluator.evaluate_workdir(averaged, beam=4, limit=16)
  assert report["decode"]["beam_size"] == 4 and report["split"] == "test"
  assert {"test/bleu", "test/bleu_tokenized", "test/perplexity"} <= set(report["metrics"])
  assert "tok:13a" in report["sacrebleu_signature"] and os.path.exists(report["path"])
  b = xformer.load(averaged)
  assert b.config.data.dataset == "wmt14_translate/de-en" and b.model_config.dtype.name == (
      "bfloat16")
  assert isinstance(b.translate("the poet sings .", beam=4), str)


def test_wmt_big_stays_big_and_runs(data_dir, tmp_path):
  config = config_lib.load_file("configs/wmt_big.py", "posemb=rope")
  model_config = config_lib.validate(config)
  assert (model_config.d_model, model_config.num_heads, model_config.dropout) == (1024, 16, 0.3)
  assert model_config.posemb == "rope" and config.num_train_steps == 300_000
  final = train.train_and_evaluate(
      _config("configs/wmt_big.py", data_dir, "num_train_steps=2", "test_bleu_examples=8",
              arg="posemb=rope"), str(tmp_path / "wmt_big"))
  assert "test/bleu" in final


def test_lm1b_trains_on_its_real_splits_and_evaluates(data_dir, tmp_path):
  workdir = str(tmp_path / "lm1b")
  final = train.train_and_evaluate(
      _config("configs/lm1b.py", data_dir, "num_train_steps=2", "eval_examples=50"), workdir)
  assert "test/perplexity" in final  # lm1b has no validation split; it evaluates on test.
  out = subprocess.run([sys.executable, "-m", "xformer.evaluate", f"--workdir={workdir}",
                        "--limit=20"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "test/perplexity" in out.stdout and "test/ppl@1x" in out.stdout
  assert "test/ppl@8x                  n/a" in out.stdout  # 100 short sentences: no 2048 window.
