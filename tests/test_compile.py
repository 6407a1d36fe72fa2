"""Ahead-of-time compiles for Cloud TPU slices and GPUs on this CPU host (xformer.compile).

libtpu describes any slice without the chip; the CUDA plugin compiles for a GPU from a target
description. Small models prove the tool's logic (estimates, fits, exit codes); the shipped
configs are compiled at their real size for their intended targets (train step: it decides
whether a run fits).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from xformer.runtime import platforms

platforms.compile_only_environment("v5p-8")  # Before libtpu is first loaded (quiet, no MDS).

# pylint: disable=wrong-import-position
from xformer import config_lib, errors, positional, targets
from xformer.runtime import sharding
from xformer.targets import compiler as compile_lib
from xformer.targets import flops
from xformer.targets import report as report_lib

pytestmark = pytest.mark.compile  # libtpu (the GPU tests: the CUDA plugin too).


@pytest.fixture(autouse=True)
def _training_matmul_precision():
  """Compile as runs do: conftest's "highest" precision (for CPU numerics) is refused by Mosaic
  for the splash kernel's bf16 matmuls, and no run sets it."""
  previous = jax.config.jax_default_matmul_precision
  jax.config.update("jax_default_matmul_precision", None)
  yield
  jax.config.update("jax_default_matmul_precision", previous)


REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SMALL = ["model.variant=tiny", "batch_size=16", "eval_batch_size=8",
         "data.max_source_len=128", "data.max_target_len=128", "model.max_len=178"]


def test_targets_by_cloud_name():
  v4 = targets.parse("v4-8")  # 8 TensorCores = 4 chips, run as 4 megacore devices.
  assert (v4.devices, v4.topology) == (4, "v4:2x2x1")
  assert targets.parse("v5p-128").topology == "v5p:4x4x4"
  assert targets.parse("v5p-32").topology == "v5p:2x2x4"
  assert (targets.parse("v5litepod-16").topology, targets.parse("v6e-8").topology) == (
      "v5e:4x4", "v6e:2x4")
  multi = targets.parse("2xv5p-64")
  assert (multi.devices, multi.num_slices, multi.topology) == (64, 2, "v5p:2x4x4")
  assert (targets.parse("h100x8").devices, targets.parse("a100").devices) == (8, 1)
  with pytest.raises(errors.UnknownNameError, match="v5litepod-N"):
    targets.parse("v5e-8")
  with pytest.raises(errors.ConfigError, match="multiple"):
    targets.parse("v4-7")


def test_abstract_devices_match_the_live_slice():
  for name, kind in [("v4-8", "TPU v4"), ("v5p-8", "TPU v5"), ("v5litepod-16", "TPU v5 lite"),
                     ("v6e-8", "TPU v6 lite")]:
    devices = targets.abstract_devices(targets.parse(name))
    assert len(devices) == targets.parse(name).devices and devices[0].device_kind == kind
    assert targets.chip_of_device_kind(kind) is targets.parse(name).chip  # The peak table.


def test_multislice_mesh_puts_the_data_axis_across_slices():
  devices = targets.abstract_devices(targets.parse("2xv5p-16"))  # 2 slices x 8 chips.
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2}, devices)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 2}
  slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert (slices[:2] == 0).all() and (slices[2:] == 1).all()  # Only data crosses the DCN.
  with pytest.raises(errors.ConfigError, match="multiple of 2"):
    sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devices)


def test_ici_aware_mesh_gives_inner_axes_compact_blocks_of_chips():
  devices = targets.abstract_devices(targets.parse("v5p-64"))  # 32 chips, 2x4x4.
  mesh = sharding.make_mesh({"data": -1, "fsdp": 4, "tensor": 4}, devices)

  def volume(group):  # Chips in the bounding box of a group: == its size when it is compact.
    coords = np.array([d.coords for d in group.reshape(-1)])
    return int(np.prod(coords.max(0) - coords.min(0) + 1))

  assert all(volume(g) == 4 for g in mesh.devices.reshape(-1, 4))  # tensor: one ICI ring
  assert all(volume(g) == 16 for g in mesh.devices.reshape(-1, 16))  # fsdp x tensor


def test_estimate_counts_every_layer_scanned_unrolled_or_rematerialized():
  """The scanned step is priced as its unrolled twin; so is a remat step (the cost-model
  compile unrolls its layers too: remat is refused on unrolled layers for running, not for
  pricing), whose recomputation costs FLOPs and saves memory. One test: the scanned compile is
  the expensive part and both checks need it."""
  deep = SMALL + ["model.variant=mini", "tokenizer.vocab_size=512", "model.num_encoder_layers=4",
                  "model.num_decoder_layers=4"]  # Layers dominate the step.
  config = config_lib.load_file(f"{REPO}/configs/wmt_base.py", None,
                                deep + ["model.scan_unroll=1"])
  scanned = compile_lib.compile_config(config, "v5p-8", steps=("train",))
  unrolled_config = config_lib.load_file(f"{REPO}/configs/wmt_base.py", None,
                                         deep + ["model.scan_unroll=4"])
  unrolled = compile_lib.compile_config(unrolled_config, "v5p-8", steps=("train",))
  assert unrolled["estimated_from"].startswith("the step as configured")
  assert scanned["estimated_from"].startswith("unrolled")
  assert abs(scanned["est_step_s"] / unrolled["est_step_s"] - 1) < 0.10
  assert abs(scanned["flops_per_step"] / unrolled["flops_per_step"] - 1) < 0.10
  # The loop's own cost counts one layer of four: the raw figure is the one that misleads.
  raw = scanned["steps"]["train"]["flops"] * scanned["devices"]
  assert raw < 0.5 * unrolled["flops_per_step"], (raw, unrolled["flops_per_step"])
  assert scanned["fits"]
  # MFU is the model's FLOPs over 4 v5p chips at their 459 TFLOP/s peak for the estimated time.
  assert scanned["est_mfu"] == pytest.approx(
      scanned["model_flops_per_step"] / (4 * 459e12 * scanned["est_step_s"]), rel=1e-9)
  # Attention runs through the splash kernels, and the cost model prices them (splash_cost).
  assert scanned["attention"].startswith("splash") and not scanned["unpriced_custom_calls"]
  assert any("splash_mha_dkv" in k for k in scanned["steps"]["train"]["kernels"])
  # The compiler's count over the model FLOPs (matmuls only; tests/test_flops.py checks them):
  # 1.28 with libtpu 0.0.42 here, the excess being this mini model's norms, softmax, dropout
  # and Adam beside its small matmuls. A layer more or less moves it by > 8%.
  ratio = scanned["flops_per_step"] / scanned["model_flops_per_step"]
  assert 1.18 < ratio < 1.38, ratio
  remat = compile_lib.compile_config(
      config_lib.load_file(f"{REPO}/configs/wmt_base.py", None,
                           deep + ["model.scan_unroll=1", "model.remat=full"]),
      "v5p-8", steps=("train",))
  assert remat["est_step_s"] > 0 and remat["estimated_from"].startswith("unrolled")
  assert remat["flops_per_step"] > 1.15 * scanned["flops_per_step"]  # The forward, again.
  assert remat["steps"]["train"]["temporaries_gib"] < scanned["steps"]["train"][
      "temporaries_gib"]


def test_compile_cli_writes_the_report_and_exits_3_when_it_does_not_fit(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out_path = tmp_path / "c.json"
  cmd = [sys.executable, "-m", "xformer.compile", f"--config={REPO}/configs/wmt_base.py",
         "--target=v5litepod-8", f"--json={out_path}", "--estimate=false",
         *[f"--config.{s}" for s in SMALL]]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out_path.read_text())
  for key in ("target", "devices", "fits", "hbm_per_device_gib", "peak_memory_per_device_gib",
              "compile_s", "flops_per_step", "model_flops_per_step", "est_step_s",
              "est_tokens_per_s", "est_mfu", "unpriced_custom_calls"):
    assert key in report, key
  assert report["devices"] == 8 and set(report["steps"]) == {"train", "eval", "decode"}
  big = subprocess.run(cmd + ["--config.batch_size=65536"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert big.returncode == compile_lib.NO_FIT_EXIT_CODE, big.stderr[-2000:]
  assert "over its 16 GiB" in big.stderr and "--config.grad_accum_steps=2" in big.stderr
  assert "INVALID_ARGUMENT" not in big.stderr  # libtpu stays quiet on a host without TPUs.


@pytest.mark.parametrize("posemb", positional.names())
def test_every_encoding_compiles_for_tpu(posemb):
  config = config_lib.load_file(f"{REPO}/configs/lm1b.py", f"posemb={posemb}",
                                ["model.variant=lm_mini", "batch_size=16", "eval_batch_size=8"])
  report = compile_lib.compile_config(config, "v5litepod-8", estimate=False,
                                      steps=("train", "decode"))
  assert report["fits"] and report["flops_per_step"] > 0


# The shipped accelerator configs at full size on their intended targets (train step), as
# shipped; wmt_base on v4-8 with its layers in a loop: its v5p-8 compile above it is the shipped
# program, and on v4 the loop proves the same things (v4's megacore devices, the splash kernels
# compiled for v4, the mesh on its torus) in a shorter compile, with the larger of the
# two memories (scanned holds more than unrolled; benchmarks/README.md), so fitting scanned means
# fitting.
SHIPPED = [("wmt_base.py", [], "v5p-8"), ("wmt_base.py", ["model.scan_unroll=1"], "v4-8"),
           ("wmt_big.py", [], "v5p-8"), ("lm1b.py", [], "v5litepod-16")]


@pytest.mark.parametrize("config_file,overrides,target", SHIPPED)
def test_shipped_configs_fit_their_targets(config_file, overrides, target):
  config = config_lib.load_file(f"{REPO}/configs/{config_file}", None, overrides)
  report = compile_lib.compile_config(config, target, estimate=False, steps=("train",))
  assert report["fits"], report_lib.remedy(report, config)
  # Chips per slice by Cloud's naming: v4/v5p count TensorCores (two per chip, one megacore
  # device each), v5e counts chips.
  assert report["devices"] == {"v5p-8": 4, "v4-8": 4, "v5litepod-16": 16}[target]
  assert report["attention"].startswith("splash")  # "auto" takes the kernel on every TPU.


@pytest.mark.compile("cuda")
def test_wmt_base_compiles_for_h100x8_with_cudnn_attention():
  config = config_lib.load_file(f"{REPO}/configs/wmt_base.py", None,
                                ["model.attention_impl=cudnn", "data.pack=False"])
  report = compile_lib.compile_config(config, "h100x8", steps=("train",))
  assert report["fits"] and report["est_step_s"] is None
  assert any("cudnn" in c for c in report["steps"]["train"]["kernels"])
  # GPU FLOPs from the unpartitioned step, all 8 devices: 0.95 of the model FLOPs, below one
  # because the fused attention counts zero (its ~7% of the step) and norms etc. add ~2%.
  assert 0.88 < report["flops_per_step"] / report["model_flops_per_step"] < 1.03


def test_estimate_counts_every_loss_chunk():
  """loss_chunk projects to the vocabulary in a loop of T / chunk trips: the estimate counts
  them all (a large vocabulary, so the projection is most of the step)."""
  wide = SMALL + ["tokenizer.vocab_size=32000", "model.scan_unroll=2", "fused_loss=False",
                  "loss_chunk=0"]  # Autodiff of the whole logits vs of checkpointed chunks.
  whole = compile_lib.compile_config(
      config_lib.load_file(f"{REPO}/configs/wmt_base.py", None, wide), "v5p-8", steps=("train",))
  chunked = compile_lib.compile_config(
      config_lib.load_file(f"{REPO}/configs/wmt_base.py", None, wide + ["loss_chunk=32"]),
      "v5p-8", steps=("train",))
  assert chunked["estimated_from"].startswith("unrolled")
  raw = chunked["steps"]["train"]["flops"] * chunked["devices"]
  assert raw < 0.6 * whole["flops_per_step"]  # The loop counted once: what misled.
  # Each chunk's logits are recomputed in the backward pass (jax.checkpoint): one more forward
  # projection, 2 x B x T x D x V.
  recompute = 2 * 16 * 128 * 64 * 32000
  assert abs(chunked["flops_per_step"] / (whole["flops_per_step"] + recompute) - 1) < 0.05


@pytest.mark.compile("cuda")
def test_gpu_flops_count_every_layer_of_a_scanned_stack():
  """GPU executables carry no cost analysis: the FLOPs come from lowering the step, unrolled
  when its layers run as a loop (a loop body would count once)."""
  config = config_lib.load_file(f"{REPO}/configs/lm1b.py", None, [
      "model.variant=lm_mini", "model.num_decoder_layers=4", "model.scan_unroll=1",
      "model.attention_impl=xla", "batch_size=16", "tokenizer.vocab_size=512"])
  report = compile_lib.compile_config(config, "h100", steps=("train",))
  assert report["estimated_from"].startswith("unrolled lowering")
  # 1.19: XLA attention computes the masked half of the causal scores the model FLOPs skip,
  # and the small model's norms and Adam add the rest.
  assert 1.10 < report["flops_per_step"] / report["model_flops_per_step"] < 1.29
  run = compile_lib.build_run(config, targets.parse("h100"))
  fn, args = compile_lib.step_and_args(run, "train")
  looped = flops.lowered_flops(fn.lower(*args))  # The loop counted once: what would mislead.
  assert looped < 0.6 * report["flops_per_step"], (looped, report["flops_per_step"])


def test_compiling_for_a_target_leaves_the_compilation_cache_as_it_was():
  """xformer.compile turns jax's persistent cache off for its compiles (executables for absent
  devices cannot be cached); the rest of the process must keep the cache it had."""
  before = jax.config.jax_enable_compilation_cache
  config = config_lib.load_file(f"{REPO}/configs/wmt_base.py", None,
                                SMALL + ["model.attention_impl=xla"])
  compile_lib.compile_config(config, "v5p-8", estimate=False, steps=("train",))
  assert jax.config.jax_enable_compilation_cache == before


def test_long_rows_over_xla_attention_fit_once_chunked():
  """An ALiBi LM at T=2048 over XLA attention, sized so that every layer's [T, T]
  probabilities overflow a v5litepod-8's 16 GiB: the remedy names attention_chunk (and
  remat), and with the chunks alone the same step fits."""
  overrides = ["model.variant=lm_mini", "model.attention_impl=xla", "data.max_target_len=2048",
               "model.max_len=2048", "tokenizer.vocab_size=1024", "batch_size=256",
               "eval_batch_size=8"]
  config = config_lib.load_file(f"{REPO}/configs/lm1b.py", "posemb=alibi", overrides)
  whole = compile_lib.compile_config(config, "v5litepod-8", estimate=False, steps=("train",))
  assert not whole["fits"]
  remedy = report_lib.remedy(whole, config)
  assert "--config.model.attention_chunk=512" in remedy and "remat=ffn" in remedy, remedy
  config = config_lib.load_file(f"{REPO}/configs/lm1b.py", "posemb=alibi", overrides + [
      "model.attention_chunk=512"])
  chunked = compile_lib.compile_config(config, "v5litepod-8", estimate=False, steps=("train",))
  assert chunked["fits"], report_lib.remedy(chunked, config)
