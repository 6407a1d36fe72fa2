"""Experiments: the TPU launcher prints exactly the commands to paste; the PE sweep runs end to
end (tiny) and writes its table and pictures; length generalisation reports n/a, not garbage,
past a learned table."""

import csv
import os
import shutil
import shlex
import sys

import numpy as np
import pytest

REPO = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(REPO, "experiments"))

import launch_tpu  # noqa: E402  pylint: disable=wrong-import-position
import pe_sweep  # noqa: E402  pylint: disable=wrong-import-position
from xformer import extrapolation  # noqa: E402  pylint: disable=wrong-import-position


def test_launcher_dry_run_prints_the_commands_a_user_would_paste(capsys):
  lines = launch_tpu.main([
      "--tpu=pe-sweep", "--zone=us-central2-b", "--type=v4-8", "--project=my-proj", "--spot",
      "--config=configs/lm_default.py", "--encodings=rope,learned", "--steps=2000",
      "--workdir_root=gs://bkt/sweep", "--repo=https://github.com/me/xformer.git",
      "--commit=abc123", "--out=/tmp/res", "--dry_run"])
  ssh = ("gcloud compute tpus tpu-vm ssh pe-sweep --zone=us-central2-b --project=my-proj "
         "--worker=all ")
  assert lines == [
      "gcloud compute tpus tpu-vm create pe-sweep --zone=us-central2-b --project=my-proj "
      "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base --spot",
      ssh + "'--command=set -e; test -d xformer || git clone "
      "https://github.com/me/xformer.git xformer; cd xformer && git fetch --all --quiet && "
      "git checkout --quiet abc123 && python3 -m pip install --quiet -e '\"'\"'.[tpu]'\"'\"''",
      ssh + "'--command=cd xformer && python3 -m xformer.main "
      "--config=configs/lm_default.py --config.model.posemb=rope --config.num_train_steps=2000 "
      "--config.seed=0 --workdir=gs://bkt/sweep/rope/seed0'",
      "gcloud storage cp -r gs://bkt/sweep/rope/seed0 /tmp/res/rope/",
      ssh + "'--command=cd xformer && python3 -m xformer.main "
      "--config=configs/lm_default.py --config.model.posemb=learned "
      "--config.num_train_steps=2000 --config.seed=0 --config.model.max_len=128 "
      "--workdir=gs://bkt/sweep/learned/seed0'",
      "gcloud storage cp -r gs://bkt/sweep/learned/seed0 /tmp/res/learned/",
      "gcloud compute tpus tpu-vm delete pe-sweep --zone=us-central2-b --project=my-proj --quiet",
  ]
  # Pasted into a shell, the remote command arrives as one argument, quotes intact.
  remote = shlex.split(lines[2])[-1]
  assert remote.startswith("--command=cd xformer && ") and "'" not in remote
  assert "# create" in capsys.readouterr().out


def test_launcher_refuses_a_workdir_that_dies_with_the_vm():
  with pytest.raises(ValueError, match="gs:// bucket"):
    launch_tpu.main(["--tpu=t", "--zone=z", "--type=v4-8", "--workdir_root=/tmp/runs",
                     "--dry_run"])
  with pytest.raises(SystemExit):
    launch_tpu.main(["--tpu=t", "--zone=z", "--type=v4-8", "--workdir_root=gs://b",
                     "--stages=create,launch", "--dry_run"])


def test_bucket_perplexity_and_windows():
  windows = extrapolation.token_windows([[5, 6, 7, 1], [8, 9, 1]], window=3, bos=2)
  np.testing.assert_array_equal(windows, [[2, 5, 6, 7], [1, 2, 8, 9]])
  nll = np.log(np.array([2.0, 2.0, 4.0, 4.0]))
  assert extrapolation.bucket_perplexity(nll, [0, 2, 4, 8]) == pytest.approx({"0-2": 2.0, "2-4": 4.0})


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
