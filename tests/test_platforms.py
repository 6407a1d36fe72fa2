"""Commands start only the jax backends whose hardware is present (xformer.platforms)."""

import os
import subprocess
import sys

import pytest

from xformer.runtime import platforms

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_platforms_follow_the_hardware_unless_jax_platforms_is_set(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(platforms, "tpu_present", lambda: False)
  monkeypatch.setattr(platforms, "gpu_present", lambda: True)
  assert not platforms.cpu_only()
  monkeypatch.setattr(platforms, "gpu_present", lambda: False)
  assert platforms.cpu_only()  # This host: neither.
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert not platforms.cpu_only()


@pytest.mark.compile("tpu", "cuda")
def test_a_command_on_a_cpu_host_with_accelerator_plugins_installed_is_quiet():
  # CI installs libtpu and the CUDA plugin (for xformer.compile); neither may speak up here.
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  out = subprocess.run([sys.executable, "-m", "xformer.sample",
                        f"--workdir={ROOT}/tests/fixtures/v0_lm", "--max_len=8", "--seed=3"],
                       env=env, capture_output=True, text=True, timeout=300, check=True)
  assert out.stdout.strip(), out.stderr
  for noise in ("INVALID_ARGUMENT", "libtpu", "CUDA", "Traceback"):
    assert noise not in out.stderr, out.stderr


def test_mesh_platform_from_either_kind_of_abstract_device():
  """jax 0.9+ names the platform; jax 0.8 gives only the device kind (xformer/runtime/compat)."""
  from types import SimpleNamespace  # pylint: disable=import-outside-toplevel
  from xformer.runtime import compat  # pylint: disable=import-outside-toplevel
  mesh = lambda **device: SimpleNamespace(abstract_device=SimpleNamespace(**device))  # noqa
  assert compat.mesh_platform(mesh(platform="tpu", device_kind="TPU v5")) == "tpu"
  assert compat.mesh_platform(mesh(device_kind="TPU v5 lite")) == "tpu"
  assert compat.mesh_platform(mesh(device_kind="cpu")) == "cpu"
  assert compat.mesh_platform(mesh(device_kind="NVIDIA H100 80GB HBM3")) == "gpu"
