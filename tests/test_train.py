"""Training: sharded equals single-device, resume equals uninterrupted, SIGTERM, learning,
and two processes agree with one."""

import functools
import os
import signal
import subprocess
import sys
import time

from conftest import coordinator_port, small_config
import jax
import numpy as np
import pytest

from xformer import config_lib, errors, train
from xformer.runtime import metric_writer
from xformer.training import steps
from xformer.workdir import averaging
from xformer.workdir.checkpoint import Checkpointer

REPO = os.path.join(os.path.dirname(__file__), "..")


def _losses(workdir, key="train/loss"):
  return {m["step"]: m[key] for m in metric_writer.read_metrics(workdir) if key in m}


@pytest.mark.parametrize("split_optimizer", [False, True], ids=["moments_as_params", "zero1"])
def test_sharded_step_equals_single_device_step(small_files, split_optimizer):
  run, inputs = train.build(small_config(small_files, **{
      "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2,
      "shard_optimizer_state": split_optimizer}))
  assert dict(run.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  it = inputs.train_iterator()[0]
  batch = next(it)
  state = run.init_state(jax.random.key(0))
  params = jax.device_get(state.params)
  assert len(state.params["embed"]["embedding"].sharding.device_set) == 8
  # A layer's output kernel is split over fsdp (embed) only; with ZeRO-1 its Adam moment is
  # also split over data: half the bytes per device.
  kernel = state.params["decoder"]["layers"]["ffn"]["wo"]["kernel"]
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == kernel.shape]
  shard = lambda x: np.prod(x.sharding.shard_shape(x.shape))  # noqa: E731
  assert moments and all(shard(m) == shard(kernel) // (2 if split_optimizer else 1)
                         for m in moments)
  sharded_state, sharded = run.p_train_step(state, run.put_batch(batch, local=True),
                                            jax.random.key(1))
  single_state = steps.TrainState(np.int32(0), params, run.tx.init(params))
  loss_fn = functools.partial(steps.loss_sums, task=run.task, model=run.model,
                              label_smoothing=run.config.label_smoothing)
  step = jax.jit(functools.partial(steps.train_step, loss_fn=loss_fn, tx=run.tx,
                                   schedule=run.schedule))
  one = jax.devices()[0]
  single_state, single = step(*jax.device_put((single_state, batch, jax.random.key(1)), one))
  for k in ("train/loss", "train/grad_norm", "train/tokens"):
    np.testing.assert_allclose(sharded[k], single[k], rtol=1e-5, err_msg=k)
  # Adam's first update is about lr * sign(g): entries with |g| ~ 1e-9 turn summation-order
  # noise into differences up to lr, so parameters agree to a small absolute tolerance...
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
               jax.device_get(sharded_state.params), jax.device_get(single_state.params))
  # ...and the next step's loss agrees as tightly as the first.
  batch = next(it)
  _, sharded = run.p_train_step(sharded_state, run.put_batch(batch, local=True),
                                jax.random.key(1))
  _, single = step(single_state, batch, jax.random.key(1))
  np.testing.assert_allclose(sharded["train/loss"], single["train/loss"], rtol=1e-5)


def test_gradient_accumulation_equals_the_full_batch(small_files):
  # Without dropout: the micro-batches draw other dropout masks than the full batch would.
  full, inputs = train.build(small_config(small_files, **{"model.dropout": 0.0}))
  accum, _ = train.build(small_config(small_files, grad_accum_steps=4, **{"model.dropout": 0.0}))
  batch = full.put_batch(next(inputs.train_iterator()[0]), local=True)
  sa, a = full.p_train_step(full.init_state(jax.random.key(0)), batch, jax.random.key(1))
  sb, b = accum.p_train_step(accum.init_state(jax.random.key(0)), batch, jax.random.key(1))
  np.testing.assert_allclose(a["train/loss"], b["train/loss"], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
               jax.device_get(sa.params), jax.device_get(sb.params))


def test_resumed_run_equals_uninterrupted_run(small_files, tmp_path):
  whole = str(tmp_path / "whole")
  whole_final = train.train_and_evaluate(small_config(small_files, test_bleu_examples=16), whole)
  parts = str(tmp_path / "parts")
  train.train_and_evaluate(small_config(small_files, num_train_steps=3), parts)
  final = train.train_and_evaluate(small_config(small_files, test_bleu_examples=16),
                                   parts)  # Resumes at step 3.
  expected = _losses(whole)
  assert sorted(expected) == [1, 2, 3, 4, 5, 6]
  assert _losses(parts) == expected  # Bit-identical per-step losses...
  crcs = _losses(whole, "data/batch_crc32")
  assert _losses(parts, "data/batch_crc32") == crcs  # ...from the same batches...
  assert len(set(crcs.values())) == 6  # ...which differ from step to step.
  # Same parameters, same decoding: the resumed run's final metrics are the uninterrupted run's.
  assert final == whole_final and "test/bleu" in final
  again = train.train_and_evaluate(small_config(small_files), parts)
  assert again == {}  # Already finished: reported, not restarted.

  # Averaging the last two checkpoints (steps 3 and 6) gives their mean, in a new run dir...
  out = str(tmp_path / "averaged")
  assert averaging.average_run(whole, out, last=2) == 6
  source = Checkpointer(os.path.join(whole, "checkpoints"), read_only=True)
  meta = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                      source.item_metadata(6, "params"))
  mean = jax.tree.map(lambda a, b: (np.asarray(a) + np.asarray(b)) / 2,
                      source.restore_params(3, meta), source.restore_params(6, meta))
  averaged = Checkpointer(os.path.join(out, "checkpoints"), read_only=True).restore_params(6, meta)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), averaged, mean)
  # ...which another run can start from (init_from): its first loss is not a fresh start's.
  tuned = str(tmp_path / "tuned")
  train.train_and_evaluate(small_config(small_files, init_from=out, num_train_steps=1), tuned)
  assert _losses(tuned)[1] < expected[1]


def test_tiny_model_learns_the_task(small_files, tmp_path):
  """Loss must fall below the unigram entropy of target tokens: the best any model can do
  while ignoring the source and the target prefix. Beating it means the model uses them."""
  config = small_config(small_files, num_train_steps=300, log_every_steps=50, batch_size=32,
                        checkpoint_every_steps=1000, **{
                            "model.dropout": 0.0, "optimizer.schedule": "cosine",
                            "optimizer.peak_lr": 3e-3, "optimizer.warmup_steps": 30})
  _, inputs = train.build(config)
  counts = np.zeros(inputs.tokenizer.vocab_size)
  for ids in (inputs.encoded("train")[i][1] for i in range(len(inputs.encoded("train")))):
    np.add.at(counts, np.append(ids, 1), 1)  # Targets include EOS (id 1).
  p = counts[counts > 0] / counts.sum()
  unigram_entropy = float(-(p * np.log(p)).sum())
  final = train.train_and_evaluate(config, str(tmp_path / "learn"))
  print(f"validation nll {final['validation/nll']:.3f}, unigram entropy {unigram_entropy:.3f}")
  assert final["validation/nll"] < 0.8 * unigram_entropy, (final, unigram_entropy)


def _write_config(path, small_files, **overrides):
  lines = ["import sys", f"sys.path.insert(0, {os.path.dirname(__file__)!r})",
           "from conftest import small_config", f"FILES = {small_files!r}",
           "def get_config(arg=None):",
           f"  return small_config(FILES, **{overrides!r})"]
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def _main(config_path, workdir, *flags, env=None):
  cmd = [sys.executable, "-m", "xformer.main", f"--config={config_path}",
         f"--workdir={workdir}", *flags]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_sigterm_saves_and_the_rerun_continues(small_files, tmp_path):
  config = _write_config(tmp_path / "cfg.py", small_files, num_train_steps=100_000,
                         checkpoint_every_steps=100_000)
  workdir = str(tmp_path / "run")
  proc = _main(config, workdir)
  lines = []
  for line in proc.stdout:  # Wait until training is under way.
    lines.append(line)
    if line.startswith("step 3/"):
      break
  start = time.time()
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=30)
  assert proc.returncode == 0, "".join(lines) + out
  assert time.time() - start < 30
  stopped = [l for l in out.splitlines() if l.startswith("Stopped by signal at step")]
  assert stopped, out
  step = int(stopped[0].split()[5].rstrip(";"))
  assert step >= 3
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                if d.isdigit()) == [step]
  proc = _main(config, workdir, f"--config.num_train_steps={step + 2}")
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert f"Resumed from step {step}" in out
  assert max(_losses(workdir)) == step + 2


def _two_processes(config, workdir, port):
  """`xformer.main` as two jax.distributed processes of 4 CPU devices each (the coordinator
  on `port`, held by conftest.coordinator_port while they run)."""
  return [_main(config, workdir, env={
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}) for i in range(2)]


@pytest.mark.slow
def test_two_processes_agree_with_one(small_files, tmp_path):
  overrides = {"data.num_shards": 2, "num_train_steps": 4, "test_bleu_examples": 16}
  single = str(tmp_path / "single")
  train.train_and_evaluate(small_config(small_files, **overrides), single)
  config = _write_config(tmp_path / "cfg.py", small_files, **overrides)
  workdir = str(tmp_path / "multi")
  with coordinator_port() as port:
    procs = _two_processes(config, workdir, port)
    outs = [p.communicate(timeout=400)[0] for p in procs]
  # Both processes' output in every failure message: this test once failed under a loaded
  # full-suite run without saying why.
  log = "".join(f"\n--- process {i} (exit {p.returncode}) ---\n{out[-4000:]}"
                for i, (p, out) in enumerate(zip(procs, outs)))
  assert all(p.returncode == 0 for p in procs), log
  multi, one = _losses(workdir), _losses(single)
  assert sorted(multi) == [1, 2, 3, 4], (multi, log)
  for s in multi:
    np.testing.assert_allclose(multi[s], one[s], rtol=1e-5,
                               err_msg=f"step {s}: {multi} vs one process {one}{log}")


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(small_files, tmp_path):
  """A preempted host gets SIGTERM: every process saves the same step and exits 0; one process
  then resumes the run (same logical data shards)."""
  config = _write_config(tmp_path / "cfg.py", small_files, num_train_steps=100_000,
                         checkpoint_every_steps=100_000, **{"data.num_shards": 2})
  workdir = str(tmp_path / "multi")
  with coordinator_port() as port:
    procs = _two_processes(config, workdir, port)
    lines = []
    for line in procs[0].stdout:  # Process 0 prints progress.
      lines.append(line)
      if line.startswith("step 3/"):
        break
    start = time.time()
    procs[1].send_signal(signal.SIGTERM)  # Only the second host is preempted.
    outs = [p.communicate(timeout=60)[0] for p in procs]
  assert time.time() - start < 30
  for p, out in zip(procs, outs):
    assert p.returncode == 0, "".join(lines) + out
  stopped = [l for l in outs[0].splitlines() if l.startswith("Stopped by signal at step")]
  assert stopped, outs[0]
  step = int(stopped[0].split()[5].rstrip(";"))
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                if d.isdigit()) == [step]
  proc = _main(config, workdir, f"--config.num_train_steps={step + 1}")
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert f"Resumed from step {step}" in out


@pytest.mark.parametrize("fused,tie,chunk", [(True, True, 8), (True, False, 8), (False, True, 8),
                                             (True, True, -1)])
def test_chunked_loss_equals_the_full_loss_and_gradients(small_files, fused, tie, chunk):
  """loss_chunk: per-chunk logits (fused: the gradient in the forward pass, projected_loss; else
  autodiff under jax.checkpoint) give the same loss and update, tied output layer or not;
  -1: one chunk of the whole target length."""
  kw = {"model.dropout": 0.0, "model.tie_output": tie, "fused_loss": fused}
  full, inputs = train.build(small_config(small_files, **kw))
  chunked, _ = train.build(small_config(small_files, loss_chunk=chunk, **kw))
  batch = full.put_batch(next(inputs.train_iterator()[0]), local=True)
  sa, a = full.p_train_step(full.init_state(jax.random.key(0)), batch, jax.random.key(1))
  sb, b = chunked.p_train_step(chunked.init_state(jax.random.key(0)), batch, jax.random.key(1))
  for k in ("train/loss", "train/nll", "train/accuracy", "train/tokens", "train/grad_norm"):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
               jax.device_get(sa.params), jax.device_get(sb.params))


def test_profile_steps_write_a_trace_and_input_wait_is_logged(small_files, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(small_config(small_files, num_train_steps=4, profile_steps="2,2"),
                           workdir)
  traces = list((tmp_path / "run" / "profile").rglob("*.xplane.pb"))
  assert traces and traces[0].stat().st_size > 0  # TensorBoard's profile plugin reads these.
  logged = [m for m in metric_writer.read_metrics(workdir) if "train/loss" in m]
  assert len(logged) == 4
  assert all(0.0 <= m["train/input_wait_fraction"] <= 1.0 for m in logged)
  with pytest.raises(errors.ConfigError, match="START,COUNT"):
    config_lib.validate(small_config(small_files, profile_steps="5"))
