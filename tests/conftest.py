"""Test set-up: 8 fake CPU devices (sharding tests), before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The embedded datasets, built once per test session (about 15 s)."""
  from xformer.data import datasets  # pylint: disable=import-outside-toplevel
  path = str(tmp_path_factory.mktemp("tfds"))
  datasets.load({"dataset": "xformer_translation", "data_dir": path})
  datasets.load({"dataset": "xformer_pydoc", "data_dir": path})
  return path


@pytest.fixture(scope="session")
def translation_data(data_dir):
  """(dataset, tokenizer) of the embedded translation task; BPE with 2,000 pieces."""
  from xformer.data import datasets, tokenizer  # pylint: disable=import-outside-toplevel
  ds = datasets.load({"dataset": "xformer_translation", "data_dir": data_dir})
  settings = tokenizer.TokenizerSettings(vocab_size=2000, model_type="bpe", sample_size=20_000)
  tok = tokenizer.get_or_train(lambda: ds.texts("train"), ds.fingerprint, settings,
                               f"{data_dir}/tokenizers")
  return ds, tok
