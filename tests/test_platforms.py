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
