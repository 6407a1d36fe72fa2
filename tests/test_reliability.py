"""Reliability: crashes mid-save, NaNs, gradient spikes, topology changes, mismatched or damaged
checkpoints, unwritable workdirs. Nothing is lost and every failure says what happened."""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap

from conftest import small_config
import jax
import numpy as np
import optax
import pytest

from xformer import train
from xformer.data import pipeline
from xformer.runtime import metric_writer
from xformer.training import steps as steps_lib
from xformer.workdir.checkpoint import Checkpointer, CheckpointMismatchError, CorruptCheckpointError

REPO = os.path.join(os.path.dirname(__file__), "..")
TESTS = os.path.dirname(os.path.abspath(__file__))


def _metrics(workdir, key="train/loss"):
  return {m["step"]: m[key] for m in metric_writer.read_metrics(workdir) if key in m}


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _restore(config, workdir, step):
  run, _ = train.build(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  params, opt_state = ckpt.restore(step, run.abstract_params, run.abstract_opt_state, None, None,
                                   None)
  return jax.device_get(params), jax.device_get(opt_state)


def _finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_kill_9_right_after_an_async_save_loses_nothing(small_files, tmp_path):
  workdir = str(tmp_path / "run")
  script = tmp_path / "crash.py"
  script.write_text(textwrap.dedent(f"""
      import os, signal, sys
      sys.path.insert(0, {TESTS!r})
      from conftest import small_config
      from xformer import train
      from xformer.workdir import checkpoint
      real_save = checkpoint.Checkpointer.save
      def save(self, step, *args, **kwargs):
        started = real_save(self, step, *args, **kwargs)
        if step == 4:  # The async write of step 4 has just been issued.
          os.kill(os.getpid(), signal.SIGKILL)
        return started
      checkpoint.Checkpointer.save = save
      train.train_and_evaluate(small_config({small_files!r}, checkpoint_every_steps=2), {workdir!r})
      """))
  proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))  # Cleans temporary directories.
  steps = ckpt.steps()
  ckpt.close()
  assert steps in ([2], [2, 4]), steps
  assert not [p for p in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in p]
  final = train.train_and_evaluate(small_config(small_files, checkpoint_every_steps=2), workdir)
  assert np.isfinite(final["test/loss"]) and max(_metrics(workdir)) == 6


def test_nan_fails_fast_and_keeps_the_last_good_checkpoint(small_files, tmp_path):
  config = small_config(small_files, checkpoint_every_steps=1, keep_checkpoints=10,
                        **{"faults.nan_at_step": 4})
  workdir = str(tmp_path / "run")
  with pytest.raises(train.NonFiniteLossError, match=r"NaN or infinite at step 4"):
    train.train_and_evaluate(config, workdir)
  assert _steps(workdir) == [1, 2, 3]
  assert _finite(_restore(config, workdir, 3))


@pytest.mark.slow
def test_nan_skip_leaves_the_state_unchanged_counts_and_gives_up(small_files, tmp_path):
  config = small_config(small_files, checkpoint_every_steps=1, keep_checkpoints=10,
                        nan_policy="skip", **{"faults.nan_at_step": 4})
  workdir = str(tmp_path / "skip")
  final = train.train_and_evaluate(config, workdir)
  assert np.isfinite(final["test/loss"])
  before, after = _restore(config, workdir, 3), _restore(config, workdir, 4)
  jax.tree.map(np.testing.assert_array_equal, before, after)  # Params and optimizer state.
  assert _metrics(workdir, "train/skipped") == {1: 0, 2: 0, 3: 0, 4: 1, 5: 0, 6: 0}
  assert _metrics(workdir, "train/skipped_total")[6] == 1
  assert not jax.tree.all(jax.tree.map(np.array_equal, after, _restore(config, workdir, 5)))
  # Three NaN steps in a row with at most two allowed: give up at the third.
  config = small_config(small_files, nan_policy="skip", max_consecutive_skips=2,
                        **{"faults.nan_at_step": 2, "faults.nan_steps": 3})
  with pytest.raises(train.NonFiniteLossError, match=r"3 consecutive non-finite steps up to "
                     r"step 4"):
    train.train_and_evaluate(config, str(tmp_path / "give_up"))


@pytest.mark.slow
def test_gradient_spike_is_clipped_to_the_threshold_and_logged(small_files, tmp_path, capsys):
  config = small_config(small_files, num_train_steps=2, checkpoint_every_steps=1,
                        **{"faults.spike_at_step": 2, "optimizer.clip_grad_norm": 1.0})
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  norms = _metrics(workdir, "train/grad_norm")
  assert norms[2] > 1e5 * norms[1]
  assert "step 2: gradient norm" in capsys.readouterr().out
  # Adam's first moment: mu2 = b1 mu1 + (1 - b1) g2, so g2 (after clipping) is recoverable.
  b1 = config.optimizer.b1
  mu1 = optax.tree_utils.tree_get(_restore(config, workdir, 1)[1], "mu")
  mu2 = optax.tree_utils.tree_get(_restore(config, workdir, 2)[1], "mu")
  g2 = jax.tree.map(lambda a, b: (b - b1 * a) / (1 - b1), mu1, mu2)
  np.testing.assert_allclose(float(steps_lib.global_norm(g2)), 1.0, rtol=1e-3)


def test_topology_change_4x2_to_1_and_2x4_and_back(small_files, tmp_path):
  def run_on(data, fsdp):
    return train.build(small_config(small_files, **{"mesh.data": data, "mesh.fsdp": fsdp}))[0]

  a = run_on(4, 2)
  state = a.init_state(jax.random.key(0))
  values = jax.device_get(state)
  ckpt = Checkpointer(str(tmp_path / "a"), async_save=False)
  ckpt.save(0, state.params, state.opt_state, None, {})
  # One device.
  single = ckpt.restore_params(0, a.abstract_params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(single), values.params)
  assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(single))
  # A (2, 4) mesh: same values, the shardings asked for.
  b = run_on(2, 4)
  params, opt_state = ckpt.restore(0, b.abstract_params, b.abstract_opt_state, b.param_shardings,
                                   b.opt_shardings, None)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get((params, opt_state)),
               (values.params, values.opt_state))
  jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(str(s)),
               params, b.param_shardings)
  # The same spec on another mesh: the embedding's D axis is cut in 4, not 2.
  embedding = lambda p: p["embed"]["embedding"]  # noqa: E731
  assert embedding(params).sharding.shard_shape(embedding(params).shape) == (400, 8)
  assert embedding(state.params).sharding.shard_shape(embedding(params).shape) == (400, 16)
  # And back onto (4, 2).
  back = Checkpointer(str(tmp_path / "b"), async_save=False)
  back.save(0, params, opt_state, None, {})
  again = back.restore_params(0, a.abstract_params, a.param_shardings)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again), values.params)
  jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(str(s)),
               again, a.param_shardings)


@pytest.mark.parametrize("change, expected", [
    ({"model.num_decoder_layers": 2}, r"decoder/layers/.*checkpoint shape \(1, .*expected shape "
                                      r"\(2, "),
    ({"model.d_model": 48}, r"embed/embedding: checkpoint shape \(400, 32\), expected shape "
                            r"\(400, 48\)"),
    ({"model.posemb": "learned", "model.max_len": 82},  # 32 source tokens + 50 decoded.
     r"decoder/posemb/table: expected \(82, 32\), missing from the checkpoint"),
    ({"tokenizer.vocab_size": 500, "init_from": "SELF"},
     r"embed/embedding: checkpoint shape \(400, 32\), expected shape \(\d+, 32\)"),
])
def test_config_that_does_not_match_the_checkpoint_fails_before_step_1(
    small_files, tmp_path_factory, change, expected):
  workdir = str(tmp_path_factory.getbasetemp() / "mismatch_source")
  if not os.path.isdir(workdir):
    train.train_and_evaluate(small_config(small_files, num_train_steps=3), workdir)
  target = workdir
  if change.get("init_from") == "SELF":  # Other vocabulary: a new run starting from this one.
    change = {**change, "init_from": workdir}
    target = str(tmp_path_factory.mktemp("other_vocab"))
  before = metric_writer.read_metrics(target) if target == workdir else []
  with pytest.raises(CheckpointMismatchError, match=expected):
    train.train_and_evaluate(small_config(small_files, num_train_steps=5, **change), target)
  after = metric_writer.read_metrics(target) if os.path.exists(target) else []
  assert after == before  # Not a single step was taken.


@pytest.mark.slow
def test_damaged_checkpoints_fall_back_to_the_newest_good_step(small_files, tmp_path, capsys):
  config = small_config(small_files, checkpoint_every_steps=2, keep_checkpoints=10)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  for path in glob.glob(f"{ckpts}/6/params/**/d/*", recursive=True):  # Missing data files.
    os.remove(path)
  meta = f"{ckpts}/4/opt_state/_METADATA"  # Truncated metadata.
  with open(meta) as f:
    text = f.read()
  with open(meta, "w") as f:
    f.write(text[:len(text) // 2])
  os.makedirs(f"{ckpts}/8")  # An empty step directory.
  os.makedirs(f"{ckpts}/junk")  # Not a step at all.
  with pytest.raises(CorruptCheckpointError, match=f"{ckpts}/6"):
    train.train_and_evaluate(small_config(small_files, restore_step=6, checkpoint_every_steps=2,
                                          keep_checkpoints=10), workdir)
  capsys.readouterr()
  final = train.train_and_evaluate(small_config(small_files, num_train_steps=10,
                                                checkpoint_every_steps=2, keep_checkpoints=10),
                                   workdir)
  out = capsys.readouterr().out
  for step in (8, 6, 4):
    assert f"damaged checkpoint {ckpts}/{step} moved to {ckpts}/{step}.damaged" in out
  assert "Resumed from step 2" in out and np.isfinite(final["test/loss"])
  assert _steps(workdir) == [2, 4, 6, 8, 10]
  assert os.path.isdir(f"{ckpts}/6.damaged") and os.path.isdir(f"{ckpts}/junk")
  # Every step damaged: an error naming them, never a silent fresh start.
  for step in _steps(workdir):
    os.remove(f"{ckpts}/{step}/params/_METADATA")
  with pytest.raises(CorruptCheckpointError, match="No readable checkpoint"):
    train.train_and_evaluate(small_config(small_files, num_train_steps=12), workdir)


def test_unwritable_workdir_fails_at_start(small_files, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match="cannot be written"):
    train.train_and_evaluate(small_config(small_files), str(blocker / "run"))


def test_a_failed_save_stops_the_run_with_an_error(small_files, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  real_save = Checkpointer.save

  def save(self, step, *args, **kwargs):
    if step == 6:  # The disk "fills up": the checkpoints directory becomes unwritable.
      self.wait()  # (Step 3's save is complete, so only step 6 can fail.)
      os.rename(self.directory, self.directory + ".moved")
      with open(self.directory, "w") as f:
        f.write("")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(Checkpointer, "save", save)
  with pytest.raises(OSError) as failure:
    train.train_and_evaluate(small_config(small_files), workdir)
  assert "Cannot write checkpoints" in str(failure.value) and "step 3" in str(failure.value)
  assert _steps_in(workdir + "/checkpoints.moved") == [3]


def _steps_in(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def test_the_package_never_unpickles():
  pattern = ("import pickle", "from pickle", "dill", "cloudpickle", "allow_pickle=True",
             "pickle.load", "torch.load")
  offenders = []
  for path in glob.glob(os.path.join(REPO, "xformer", "**", "*.py"), recursive=True):
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if any(p in line for p in pattern):
          offenders.append(f"{path}:{number}: {line.strip()}")
  assert not offenders, offenders


@pytest.mark.parametrize("flag, message", [
    ("--config.batch_sise=3", 'Did you mean "batch_size"'),
    ("--config.model.posemb=rope2", "Did you mean 'rope'? Valid names: none, sinusoidal"),
    ("--config.model.posemb_kw.rope.bse=5", 'Did you mean "base"'),
    ("--config.batch_size=abc", "invalid literal for int()"),
    ("--config.data.overlong=clip", "choose one of ['drop', 'truncate']"),
    ("--config.data.eval_split=dev", "has no such split; it has ['train', 'validation', 'test',"),
    ("--config.model.posemb=learned --config.model.max_len=64",
     "Set --config.model.max_len=114"),
    ("--config.mesh.data=3", "needs 3 devices, there are 8"),
    ("--config.batch_size=60", "batch_size=60 rows cannot be split over the mesh's 8"),
    ("--config.model.variant=lm_base", "The translation task needs an encoder"),
])
def test_config_errors_are_clear_and_come_before_anything_runs(tmp_path, flag, message):
  workdir = tmp_path / "run"
  out = subprocess.run([sys.executable, "-m", "xformer.main", "--config=configs/default.py",
                        f"--workdir={workdir}", *flag.split()], cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 2, out.stderr[-2000:]
  assert message in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr and out.stderr.strip().startswith("error: ")
  assert not workdir.exists()  # Nothing built, nothing compiled, nothing written.


@pytest.mark.slow
def test_user_errors_at_run_time_are_one_line_unless_verbose(small_files, tmp_path):
  """Misaligned parallel files are found when the dataset is built: one line, exit 2; the
  traceback with --verbosity=1."""
  (tmp_path / "a.en").write_text("one\ntwo\n")
  (tmp_path / "a.de").write_text("eins\n")
  files = json.dumps({"train": [str(tmp_path / "a.en"), str(tmp_path / "a.de")],
                      "validation": [str(tmp_path / "a.en"), str(tmp_path / "a.de")],
                      "test": [str(tmp_path / "a.en"), str(tmp_path / "a.de")]})
  cmd = [sys.executable, "-m", "xformer.main", "--config=configs/default.py",
         f"--workdir={tmp_path / 'run'}", "--config.data.dataset=parallel_files",
         f"--config.data.files={files}", f"--config.data.data_dir={tmp_path / 'tfds'}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert "differ in length" in out.stderr.strip().splitlines()[-1]
  out = subprocess.run(cmd + ["--verbosity=1"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, check=False)
  assert out.returncode != 0 and "Traceback" in out.stderr


def test_sequence_edge_cases_are_counted_and_never_nan(small_files):
  run, inputs = train.build(small_config(small_files))
  src_max, tgt_max = inputs.lengths.source, inputs.lengths.target
  tok = inputs.tokenizer
  word = tok.encode("the")[0]
  cases = {"empty source": ([], tok.encode("a poet .")),
           "exactly max": ([word] * (src_max - 1), [word] * (tgt_max - 1)),  # + EOS = max
           "max + 1": ([word] * src_max, [word] * 3),
           "10 x max": ([word] * (10 * src_max), [word] * 3)}
  for policy, kept, cut in (("drop", 2, 0), ("truncate", 4, 2)):
    counter = pipeline.OverlongCounter()
    frame = pipeline.Frame(run.task, inputs.lengths, policy, counter)
    framed = [frame.map((np.array(s, np.int32), np.array(t, np.int32)))
              for s, t in cases.values()]
    pad = pipeline.PadUnpacked(run.task.feature_lengths(inputs.lengths))
    examples = [pad.map(ex) for ex in framed if ex is not None]
    summary = counter.summary()
    assert len(examples) == kept and summary["truncated_overlong"] == cut, (policy, summary)
    assert summary["dropped_overlong"] == 4 - kept
    assert all(len(ex["inputs"]) == src_max for ex in examples)
  # The truncated cases plus an all-padding row, through a train step and an eval step.
  batch = {k: np.stack([ex[k] for ex in examples] + [np.zeros_like(examples[0][k])] * 4)
           for k in examples[0]}
  state = run.init_state(jax.random.key(0))
  sums = run.p_eval_step(state.params, run.put_batch(batch))
  assert all(np.isfinite(float(v)) for v in sums.values())
  padding_only = {k: np.zeros_like(v) for k, v in batch.items()}
  new_state, metrics = run.p_train_step(state, run.put_batch(padding_only, local=True),
                                        jax.random.key(1))
  assert float(metrics["train/loss"]) == 0.0 and float(metrics["train/tokens"]) == 0.0
  assert _finite(jax.device_get(new_state.params))
  new_state, metrics = run.p_train_step(new_state, run.put_batch(batch, local=True),
                                        jax.random.key(1))
  assert np.isfinite(float(metrics["train/loss"])) and _finite(jax.device_get(new_state.params))
  # Evaluation covers every example of a split exactly once, over-long ones truncated.
  source = inputs.encoded("validation")
  batches, counter = pipeline.eval_batches(source, task=run.task, lengths=inputs.lengths,
                                           batch_size=16)
  rows = tokens = 0
  for b in batches:
    rows += int((b["targets_segment_ids"].max(axis=1) > 0).sum())
    tokens += int((b["targets_segment_ids"] > 0).sum())
  assert rows == len(source) == counter.summary()["examples"]
  assert tokens == sum(min(len(source[i][1]) + 1, tgt_max) for i in range(len(source)))


def test_several_processes_agree_on_a_stop_only_every_k_steps(monkeypatch):
  # The all-gather that ORs the flag blocks the host: never between every two steps.
  from xformer.runtime import preemption  # pylint: disable=import-outside-toplevel
  gathers = []
  monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
  monkeypatch.setattr(preemption.multihost_utils, "process_allgather",
                      lambda x: gathers.append(int(x)) or np.array([x, False]))
  stop = preemption.StopSignal(every=10)
  try:
    assert not any(stop.should_stop(s) for s in range(1, 20))
    assert gathers == [0]  # Step 10 only.
    stop.received = signal.SIGTERM  # Another process may not know yet: wait for step 20.
    assert not stop.should_stop(21 - 2) and stop.should_stop(20) and gathers == [0, 1]
  finally:
    stop.restore()


def test_a_metrics_line_the_disk_cuts_short_is_taken_back(tmp_path, monkeypatch):
  """A full disk writes half of a metrics line, then ENOSPC: the file keeps its whole lines
  only (a reader never meets half a JSON object) and the writer raises StorageError."""
  import builtins  # pylint: disable=import-outside-toplevel
  import errno  # pylint: disable=import-outside-toplevel
  from xformer import errors  # pylint: disable=import-outside-toplevel
  from xformer.runtime import metric_writer  # pylint: disable=import-outside-toplevel
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write(1, {"train/loss": 5.0})
  real_open = builtins.open

  class HalfWrite:
    def __init__(self, f):
      self.f = f

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

    def write(self, text):
      self.f.write(text[:len(text) // 2])
      self.f.flush()
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(builtins, "open", lambda path, mode="r", *a, **k: HalfWrite(
      real_open(path, mode, *a, **k)) if str(path).endswith("metrics.jsonl") and mode == "a"
      else real_open(path, mode, *a, **k))
  with pytest.raises(errors.StorageError, match=r"metrics.jsonl failed \(no space left on "
                     r"device\); the lines before this one are intact"):
    writer.write(2, {"train/loss": 4.0})
  monkeypatch.setattr(builtins, "open", real_open)
  assert metric_writer.read_metrics(str(tmp_path)) == [{"step": 1, "train/loss": 5.0}]
  writer.close()
