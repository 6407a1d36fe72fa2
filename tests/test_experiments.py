"""Experiments: the TPU launcher prints exactly the commands to paste; the PE sweep runs end to
end (tiny) and writes its table and pictures; length generalisation reports n/a, not garbage,
past a learned table."""

import csv
import os
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
      "git checkout --quiet abc123 && python3 -m pip install --quiet -e '\"'\"'.[tpu]'\"'\"' "
      "gcsfs'",
      ssh + "'--command=cd xformer && python3 -m xformer.main "
      "--config=configs/lm_default.py --config.model.posemb=rope --config.num_train_steps=2000 "
      "--config.seed=0 --workdir=gs://bkt/sweep/rope'",
      "gcloud storage cp -r gs://bkt/sweep/rope/metrics.jsonl gs://bkt/sweep/rope/tokenizer.model "
      "gs://bkt/sweep/rope/tokenizer.json /tmp/res/rope/",
      ssh + "'--command=cd xformer && python3 -m xformer.main "
      "--config=configs/lm_default.py --config.model.posemb=learned "
      "--config.num_train_steps=2000 --config.seed=0 --config.model.max_len=128 "
      "--workdir=gs://bkt/sweep/learned'",
      "gcloud storage cp -r gs://bkt/sweep/learned/metrics.jsonl "
      "gs://bkt/sweep/learned/tokenizer.model gs://bkt/sweep/learned/tokenizer.json "
      "/tmp/res/learned/",
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
  out = str(tmp_path / "sweep")
  pe_sweep.main([
      "--config=configs/lm_default.py", "--encodings=learned,alibi", "--steps=3",
      f"--out={out}", f"--set=data.data_dir={data_dir}", "--set=data.max_target_len=16",
      "--set=model.d_model=32", "--set=model.num_heads=2", "--set=model.d_ff=64",
      "--set=model.num_decoder_layers=1", "--set=batch_size=8", "--set=tokenizer.vocab_size=500",
      "--set=log_every_steps=1", "--set=eval_every_steps=100", "--set=checkpoint_every_steps=100"])
  for name in ("results.md", "results.csv", "training_curves.png", "final_metric.png",
               "length_generalization.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "results.csv")) as f:
    rows = {r["encoding"]: r for r in csv.DictReader(f)}
  assert rows["learned"]["ppl@1x"] and rows["learned"]["ppl@2x"] == ""  # Past the table: n/a.
  for k in (1, 2, 4, 8):
    assert np.isfinite(float(rows["alibi"][f"ppl@{k}x"]))
  text = open(os.path.join(out, "results.md")).read()
  assert "n/a (table 16)" in text
