"""gs:// for real, against a local Cloud Storage emulator on 127.0.0.1 (gcp-storage-emulator).

Every library is pointed at it through its documented endpoint setting, in the environment of
the commands under test: gcsfs (etils.epath's gs:// without TensorFlow: metrics, tokenizer,
config, averaging) and google-cloud-storage (tensorboardX) read STORAGE_EMULATOR_HOST;
tensorstore (orbax's checkpoint arrays) reads TENSORSTORE_GCS_HTTP_URL and, for its auth,
GOOGLE_AUTH_TOKEN_FOR_TESTING. The dataset's data_dir is gs:// too: array_record cannot open
gs:// files without TensorFlow, so xformer prepares it in a local mirror and pushes it to the
bucket (xformer/data/mirror.py); the resumed run, on a "host" with another home directory,
pulls it from there. The emulator, with its gaps to real Cloud Storage filled, is
tests/gcs_emulator.py.
The checks read the bucket with google-cloud-storage, not with the code under test.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # End-to-end: CI's second tier.

REPO = os.path.join(os.path.dirname(__file__), "..")

pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("google.cloud.storage")
import gcs_emulator  # noqa: E402  (after the skips: it imports the emulator)


@pytest.fixture(scope="module")
def gcs():
  """A running emulator with bucket `bkt`, and the environment that points clients at it."""
  with gcs_emulator.serve("bkt") as (_, env):
    yield ({**os.environ, **env, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
           gcs_emulator.bucket_client("bkt"))


def _run(env, *args, timeout=600):
  out = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout, check=False)
  assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
  return out.stdout + out.stderr


def _flags(small_files, steps):
  return ["--config=configs/default.py", "--config.data.dataset=parallel_files",
          f"--config.data.files={small_files['files']}",
          "--config.data.data_dir=gs://bkt/tfds",
          "--config.tokenizer.cache_dir=gs://bkt/tokenizers",
          "--config.data.max_source_len=32", "--config.data.max_target_len=32",
          "--config.tokenizer.vocab_size=400", "--config.model.d_model=32",
          "--config.model.num_heads=2", "--config.model.d_ff=64",
          "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
          "--config.model.max_len=64", "--config.batch_size=8", "--config.log_every_steps=1",
          f"--config.num_train_steps={steps}", "--config.checkpoint_every_steps=2",
          "--config.eval_every_steps=1000", "--config.eval_examples=20",
          "--config.bleu_examples=0", "--config.test_bleu_examples=-1",
          "--config.num_samples_to_print=0", "--config.keep_checkpoints=5"]


def test_train_resume_average_and_load_on_gcs(gcs, small_files, tmp_path):
  env, bucket = gcs
  env = {**env, "HOME": str(tmp_path / "home")}  # Its dataset mirror (~/.cache) stays here.
  workdir = "gs://bkt/runs/tiny"
  first = _run(env, "-m", "xformer.main", *_flags(small_files, 4), f"--workdir={workdir}")
  assert "Training steps 0..4" in first
  names = {b.name for b in bucket.list_blobs(prefix="runs/tiny/")}
  assert {"runs/tiny/metrics.jsonl", "runs/tiny/tokenizer.model"} <= names, sorted(names)
  assert any(n.startswith("runs/tiny/checkpoints/4/") for n in names), sorted(names)
  assert any(n.startswith("runs/tiny/tensorboard/") for n in names), sorted(names)
  assert any(b.name.endswith(".model") for b in bucket.list_blobs(prefix="tokenizers/"))

  assert any(b.name.endswith("/dataset_info.json") for b in bucket.list_blobs(prefix="tfds/"))
  other_host = {**env, "HOME": str(tmp_path / "other_home")}  # No local mirror there yet.
  second = _run(other_host, "-m", "xformer.main", *_flags(small_files, 6),
                f"--workdir={workdir}")
  assert "Training steps 4..6" in second and "Training the tokenizer" not in second
  assert "Copying dataset gs://bkt/tfds/" in second and "Preparing dataset" not in second
  assert list((tmp_path / "other_home").rglob("dataset_info.json"))
  metrics = [json.loads(line) for line in
             bucket.blob("runs/tiny/metrics.jsonl").download_as_text().splitlines()]
  assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2, 3, 4, 5, 6]

  _run(env, "-m", "xformer.average", f"--workdir={workdir}", "--last=2",
       "--out=gs://bkt/runs/tiny_avg")
  assert any(b.name.startswith("runs/tiny_avg/checkpoints/") for b in bucket.list_blobs())
  out = _run(env, "-c", "import xformer; b = xformer.load('gs://bkt/runs/tiny_avg'); "
             "print('STEP', b.step, 'AVG', b.config.get('averaged_steps'), 'OUT', "
             "b.translate(['the poet sings .'], beam=1))")
  assert "STEP 6" in out and "OUT [" in out, out[-2000:]
