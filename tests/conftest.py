"""Test set-up: 8 fake CPU devices (sharding tests), before jax is imported anywhere."""

import contextlib
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, its subprocesses and xdist workers: most
# tests compile the same small model, and compiling dominates their time on CPU.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"xformer_test_jax_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The embedded datasets, built once per test session."""
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
  tok = tokenizer.get_or_train(lambda n: ds.sample_texts("train", n), ds.fingerprint, settings,
                               f"{data_dir}/tokenizers")
  return ds, tok


@pytest.fixture(scope="session")
def small_files(tmp_path_factory):
  """A small synthetic parallel corpus as TSV files (3,000 / 100 / 100 pairs)."""
  import json  # pylint: disable=import-outside-toplevel
  import random  # pylint: disable=import-outside-toplevel
  from xformer.data import synthetic  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("small")
  rng = random.Random(0)
  files = {}
  for split, n in (("train", 3000), ("validation", 100), ("test", 100)):
    path = root / f"{split}.tsv"
    path.write_text("".join("\t".join(synthetic.sentence(rng, 0, max_adj=1)) + "\n"
                            for _ in range(n)))
    files[split] = [str(path)]
  return {"files": json.dumps(files), "data_dir": str(root / "tfds")}


def small_config(small_files, **overrides):
  """configs/default.py shrunk to a 1+1-layer d32 model on the small corpus; seconds per run."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "default.py")
  spec = importlib.util.spec_from_file_location("default_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data.dataset = "parallel_files"
  c.data.files = small_files["files"]
  c.data.data_dir = small_files["data_dir"]
  c.data.max_source_len = c.data.max_target_len = 32
  c.tokenizer.vocab_size = 400
  c.model.update(dict(d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1,
                      num_decoder_layers=1, max_len=64))
  c.batch_size = 8
  c.num_train_steps = 6
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  c.eval_every_steps = 1000
  c.eval_examples = 50
  c.bleu_examples = 0
  c.test_bleu_examples = -1  # No final BLEU (a decode compile) unless a test asks for it.
  c.eval_batch_size = 16
  c.num_samples_to_print = 0
  c.optimizer.warmup_steps = 10
  for key, value in overrides.items():
    node = c
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    node[last] = value
  c.lock()
  return c


def main_command(small_files, workdir, steps, checkpoint_every, python=None):
  """`python -m xformer.main` on the small corpus with small_config's model: for tests that
  run the command itself (exit status, stderr, signals)."""
  import sys  # pylint: disable=import-outside-toplevel
  return [python or sys.executable, "-m", "xformer.main", "--config=configs/default.py",
          f"--workdir={workdir}", "--config.data.dataset=parallel_files",
          f"--config.data.files={small_files['files']}",
          f"--config.data.data_dir={small_files['data_dir']}",
          "--config.data.max_source_len=32", "--config.data.max_target_len=32",
          "--config.tokenizer.vocab_size=400", "--config.model.d_model=32",
          "--config.model.num_heads=2", "--config.model.d_ff=64",
          "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
          "--config.model.max_len=64", "--config.batch_size=8", "--config.log_every_steps=1",
          f"--config.num_train_steps={steps}",
          f"--config.checkpoint_every_steps={checkpoint_every}",
          "--config.eval_every_steps=1000", "--config.eval_examples=20",
          "--config.test_bleu_examples=-1", "--config.num_samples_to_print=0"]


@contextlib.contextmanager
def coordinator_port():
  """A free 127.0.0.1 port for jax.distributed's coordinator, held until the block ends: the
  socket is bound with SO_REUSEPORT (not listening), which the coordinator's gRPC server also
  sets, so it can bind the port while no other test (another xdist worker) is given it.
  Binding and closing a probe socket left a window in which another worker could take it."""
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    if hasattr(socket, "SO_REUSEPORT"):
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]


# Tests marked `compile` need the accelerator compilers of `.[compile]` (libtpu; "cuda": the CUDA
# plugin). Without them they skip, saying which extra brings them, except where
# XFORMER_REQUIRE_COMPILERS=1 (.ci/run sets it): there a missing compiler is a failure.
_COMPILERS = {"tpu": "libtpu", "cuda": "jax_plugins.xla_cuda12"}


def pytest_runtest_setup(item):
  marker = item.get_closest_marker("compile")
  if marker is None:
    return
  import importlib.util  # pylint: disable=import-outside-toplevel
  for platform in marker.args or ("tpu",):
    module = _COMPILERS[platform]
    try:
      found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
      found = False
    if not found:
      message = (f"needs the {platform.upper()} compiler ({module}): "
                 "pip install -e '.[compile]' (Linux)")
      if os.environ.get("XFORMER_REQUIRE_COMPILERS") == "1":
        pytest.fail(message + "; XFORMER_REQUIRE_COMPILERS=1 makes this a failure")
      pytest.skip(message)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
  """No test opens a connection off this machine: a TFDS builder probing its bucket, a download
  retried for minutes, fails at once instead (loopback stays open: the gs:// emulator)."""
  import ipaddress  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  connect = socket.socket.connect

  def guarded(sock, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
      try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
      except ValueError:
        local = False  # A host name: resolving it is the network already.
      if not local:
        raise OSError(f"test tried to reach {address}: no network in tests (conftest)")
    return connect(sock, address)

  monkeypatch.setattr(socket.socket, "connect", guarded)
