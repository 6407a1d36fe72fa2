"""Experiments: the PE sweep runs end to end (tiny) and writes its table and pictures; length
generalisation reports n/a, not garbage, past a learned table. (The launcher: test_launch.py.)"""

import csv
import os
import shutil
import sys

import numpy as np
import pytest

REPO = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(REPO, "experiments"))

import pe_sweep  # noqa: E402  pylint: disable=wrong-import-position

from xformer.evaluation import extrapolation  # noqa: E402  pylint: disable=wrong-import-position


def test_bucket_perplexity_and_windows():
  windows = extrapolation.token_windows([[5, 6, 7, 1], [8, 9, 1]], window=3, bos=2)
  np.testing.assert_array_equal(windows, [[2, 5, 6, 7], [1, 2, 8, 9]])
  nll = np.log(np.array([2.0, 2.0, 4.0, 4.0]))
  assert extrapolation.bucket_perplexity(nll, [0, 2, 4, 8]) == pytest.approx({"0-2": 2.0, "2-4": 4.0})


@pytest.mark.slow
def test_pe_sweep_end_to_end_tiny(data_dir, tmp_path):
  """Two seeds of two labels (one a variant with randomized positions, read once more with YaRN
  at evaluation), two runs at a time; then tabulated again from a copy of the run directories."""
  out = str(tmp_path / "sweep")
  flags = [
      "--config=configs/lm_default.py", "--encodings=learned", "--steps=3", "--seeds=2",
      "--variant=rope_rand=rope,model.random_positions=200", "--extend=yarn", "--parallel=2",
      f"--set=data.data_dir={data_dir}", "--set=data.max_target_len=16",
      "--set=model.d_model=32", "--set=model.num_heads=2", "--set=model.d_ff=64",
      "--set=model.num_decoder_layers=1", "--set=batch_size=8", "--set=tokenizer.vocab_size=500",
      "--set=log_every_steps=1", "--set=eval_every_steps=100", "--set=checkpoint_every_steps=100"]
  pe_sweep.main([*flags, f"--out={out}"])
  for name in ("results.md", "results.csv", "training_curves.png", "final_metric.png",
               "length_generalization.png", "position_loss.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert sorted((r["label"], r["seed"]) for r in rows) == [
      ("learned", "0"), ("learned", "1"), ("rope_rand", "0"), ("rope_rand", "1"),
      ("rope_rand+yarn", "0"), ("rope_rand+yarn", "1")]
  by = {(r["label"], r["seed"]): r for r in rows}
  assert by["learned", "0"]["ppl@1x"] and by["learned", "0"]["ppl@2x"] == ""  # Past the table.
  assert by["learned", "0"]["train_loss"] != by["learned", "1"]["train_loss"]  # seeds differ
  assert by["rope_rand", "0"]["ppl@1x"] == by["rope_rand+yarn", "0"]["ppl@1x"]  # factor 1
  assert by["rope_rand", "0"]["ppl@8x"] != by["rope_rand+yarn", "0"]["ppl@8x"]
  for k in (1, 2, 4, 8):
    assert np.isfinite(float(by["rope_rand", "1"][f"ppl@{k}x"]))
  log = open(os.path.join(out, "rope_rand", "seed0", "log.txt")).read()
  assert "--config.model.random_positions=200" in log and "--config.seed=0" in log
  text = open(os.path.join(out, "results.md")).read()
  assert "n/a (table 16)" in text and " ± " in text and "| rope_rand+yarn | 2 |" in text

  copy = str(tmp_path / "copied")  # As copied back from a TPU VM: only the run directories.
  shutil.copytree(out, copy, ignore=shutil.ignore_patterns("results.md", "results.csv", "*.png"))
  shutil.rmtree(out)
  pe_sweep.main([*flags, f"--out={copy}", "--collect_only"])
  assert open(os.path.join(copy, "results.md")).read() == text.replace(out, copy)
