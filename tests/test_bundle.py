"""xformer.load: a checkpoint sharded over 8 devices loads on 1 with identical outputs; score
agrees with the training loss; averaging; the CLIs; the notebook runs headless."""

import json
import os
import subprocess
import sys
import warnings

from conftest import small_config
import jax
import numpy as np
import pytest

import xformer
from xformer import errors, train
from xformer.data import pipeline
from xformer.data.tokenizer import BOS_ID, EOS_ID
from xformer.evaluation import viz
from xformer.training import steps
from xformer.workdir import bundle
from xformer.workdir.checkpoint import Checkpointer

REPO = os.path.join(os.path.dirname(__file__), "..")
SOURCES = ["the poet sings .", "a quiet castle paints the mirror today .", "she thanks a poet ."]


def _sharded_config(small_files, **overrides):
  return small_config(small_files, num_train_steps=8, checkpoint_every_steps=4,
                      **{"mesh.data": 4, "mesh.fsdp": 2, "model.posemb": "rope", **overrides})


@pytest.fixture(scope="module")
def sharded_run(small_files, tmp_path_factory):
  """A tiny translation run trained and saved with parameters sharded over a (4, 2) mesh."""
  workdir = str(tmp_path_factory.mktemp("sharded_run"))
  train.train_and_evaluate(_sharded_config(small_files), workdir)
  return workdir


def _one_device(args, stdin=None):
  """Runs `python -m xformer.<args>` in a fresh process that sees a single CPU device."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_checkpoint_from_8_devices_translates_identically_on_1(small_files, sharded_run):
  run, inputs = train.build(_sharded_config(small_files), sharded_run)
  ckpt = Checkpointer(os.path.join(sharded_run, "checkpoints"), read_only=True)
  params = ckpt.restore_params(8, run.abstract_params, run.param_shardings)
  assert len(params["embed"]["embedding"].sharding.device_set) == 8
  on_eight = bundle.Bundle(run, params, inputs.tokenizer, 8, sharded_run)
  expected = on_eight.translate(SOURCES, beam=2, nbest=True)
  # The same checkpoint through the CLI in a process with one device.
  out = _one_device(["xformer.translate", f"--workdir={sharded_run}", "--beam=2", "--nbest"],
                    stdin="\n".join(SOURCES) + "\n")
  blocks = out.strip("\n").split("\n\n")
  assert len(blocks) == len(SOURCES)
  for block, want in zip(blocks, expected):
    got = [(line.split("\t")[1], float(line.split("\t")[0])) for line in block.split("\n")]
    assert [t for t, _ in got] == [t for t, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-4)


def test_load_gives_one_device_params_and_score_equals_the_training_nll(small_files,
                                                                        sharded_run):
  b = xformer.load(sharded_run)
  assert b.step == 8 and b.config.task == "translation"
  leaves = jax.tree.leaves(b.params)
  assert all(len(x.sharding.device_set) == 1 for x in leaves)
  ds = train.build(_sharded_config(small_files), sharded_run)[1].dataset
  src, tgt = ds.example("test", 0)
  scored = b.score(src, tgt)
  assert scored.pieces[-1] == "</s>" and len(scored.ids) == len(b.tokenizer.encode(tgt)) + 1
  # The training path: pipeline framing and padding, eval_step's token sums (no smoothing).
  lengths = pipeline.Lengths(64, 64)
  frame = pipeline.Frame(b.run.task, lengths, "drop", pipeline.OverlongCounter())
  example = frame.map((np.array(b.tokenizer.encode(src)), np.array(b.tokenizer.encode(tgt))))
  pad = pipeline.PadUnpacked(b.run.task.feature_lengths(lengths))
  batch = {k: v[None] for k, v in pad.map(example).items()}
  sums = jax.jit(lambda p, x: steps.loss_sums(p, x, None, None, task=b.run.task, model=b.model,
                                              label_smoothing=0.0))(b.params, batch)
  np.testing.assert_allclose(scored.nll, float(sums["nll"] / sums["weight"]), rtol=1e-5)
  assert int(sums["weight"]) == len(scored.ids)
  hyp = b.translate(src, beam=1)
  assert b.translate([src, src], beam=1) == [hyp, hyp]
  # Greedy (cached decode): each output token is the full model's argmax after the ones before.
  rows, _ = b.rows([b.tokenizer.encode(src) + [EOS_ID]])
  out = np.asarray(b.run.translate(b.params, rows, b.decode_settings(beam_size=1))[0])[0, 0]
  assert b.tokenizer.decode(out) == hyp
  tgt_in = np.concatenate([[BOS_ID], out[:-1]])[None]
  logp = np.asarray(jax.nn.log_softmax(b.model.apply({"params": b.params}, rows[:1], tgt_in)))
  n = int(np.sum(out != 0))
  np.testing.assert_allclose(logp[0, np.arange(n), out[:n]], logp[0, :n].max(-1), atol=1e-4)
  # Attention maps: rows sum to one; shapes follow the pieces.
  maps = b.attention_maps(src, tgt)
  cfg = b.model_config
  assert maps["cross"].shape == (cfg.num_decoder_layers, cfg.num_heads,
                                 len(maps["target_pieces"]), len(maps["source_pieces"]))
  for kind in ("encoder_self", "decoder_self", "cross"):
    np.testing.assert_allclose(maps[kind].sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.triu(maps["decoder_self"], k=1) == 0)  # Causal.
  for fig in (viz.plot_attention(maps, "cross"), viz.plot_logprobs(scored)):
    assert fig.axes


def test_average_last_is_the_mean_of_the_checkpoints(sharded_run):
  avg = xformer.load(sharded_run, average_last=2)
  assert avg.averaged_steps == [4, 8]
  p4 = xformer.load(os.path.join(sharded_run, "checkpoints", "4")).params
  p8 = xformer.load(sharded_run).params
  jax.tree.map(lambda a, x, y: np.testing.assert_allclose(a, (x + y) / 2, rtol=1e-6),
               avg.params, p4, p8)
  with pytest.raises(errors.UserError, match="has steps"):
    xformer.load(sharded_run, step=5)


def test_positional_pictures_of_every_encoding():
  for name in xformer.positional.names():
    values, _ = viz.positional_pattern(name, length=16, d_model=32, num_heads=4)
    assert np.all(np.isfinite(values))
    assert viz.plot_positional(name, length=16, d_model=32, num_heads=4).axes
  sin, _ = viz.positional_pattern("sinusoidal", length=16, d_model=32)
  np.testing.assert_allclose(sin[:, 0], np.sin(np.arange(16)), atol=1e-6)  # Paper: PE(p, 0).


@pytest.mark.slow
def test_lm_bundle_generates_scores_and_samples(small_files, tmp_path):
  config = small_config(small_files, task="lm", **{"data.dataset": "text_files"})
  workdir = str(tmp_path / "lm")
  train.train_and_evaluate(config, workdir)
  b = xformer.load(workdir)
  with pytest.raises(ValueError, match="generate"):
    b.translate("x")
  a = b.generate(["the poet", "a"], max_len=24, temperature=1.0, top_k=20, seed=3)
  assert a == b.generate(["the poet", "a"], max_len=24, temperature=1.0, top_k=20, seed=3)
  greedy = b.generate("the poet", max_len=24, temperature=0.0)
  assert greedy == b.generate("the poet", max_len=24, top_k=1, seed=7)
  scored = b.score(["the poet sings ."])[0]
  assert scored.pieces[-1] == "</s>"
  # The per-token log-probs are the training loss's: the eval step's nll of the same text.
  task, text = b.run.task, np.array(b.tokenizer.encode("the poet sings ."))
  lengths = pipeline.Lengths(16, 16)
  example = pipeline.Frame(task, lengths, "drop", pipeline.OverlongCounter()).map((text,))
  batch = {k: v[None] for k, v in pipeline.PadUnpacked(task.feature_lengths(lengths)).map(
      example).items()}
  sums = steps.loss_sums(b.params, batch, None, None, task=task, model=b.model,
                         label_smoothing=0.0)
  np.testing.assert_allclose(scored.nll, float(sums["nll"] / sums["weight"]), rtol=1e-5)
  assert int(sums["weight"]) == len(scored.ids) == len(text) + 1
  maps = b.attention_maps("the poet sings .")
  assert set(maps) == {"decoder_self", "target_pieces"}
  out = _one_device(["xformer.sample", f"--workdir={workdir}", "--prompt=the poet",
                     "--max_len=24", "--temperature=0"])
  assert out.strip() == f"the poet {greedy}".strip()


def test_notebook_runs_headless(sharded_run, monkeypatch):
  import nbclient  # pylint: disable=import-outside-toplevel  (the test extra has them)
  import nbformat  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("XFORMER_RUN", sharded_run)
  path = os.path.join(REPO, "experiments", "reload.ipynb")
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={
      "metadata": {"path": os.path.dirname(path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o["output_type"] == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 3  # Log-prob bars, attention maps, positional pattern.
  text = "".join(o.get("text", "") for o in outputs)
  assert "greedy:" in text and "beam" in text


def test_bad_paths_say_what_is_wrong(tmp_path):
  with pytest.raises(errors.UserError, match="neither a run directory"):
    bundle.load(str(tmp_path))


def test_a_run_records_its_versions_and_load_warns_when_they_differ(sharded_run, monkeypatch):
  from etils import epath  # noqa: PLC0415

  from xformer.workdir import provenance  # noqa: PLC0415
  starts = [json.loads(line) for line in
            (epath.Path(sharded_run) / "environment.jsonl").read_text().splitlines()]
  assert starts[0]["packages"]["jax"] == jax.__version__
  assert starts[0]["xformer_commit"] == provenance.git_commit()
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Same process, same versions: no warning.
    xformer.load(sharded_run)
  other = {**starts[0], "packages": {**starts[0]["packages"], "jax": "0.4.1"}}
  assert provenance.differences(other) == [f"jax 0.4.1 -> {jax.__version__}"]
  monkeypatch.setattr(provenance, "current", lambda: other)  # A notebook with another jax.
  with pytest.warns(UserWarning, match=f"jax {jax.__version__} -> 0.4.1"):
    xformer.load(sharded_run)
