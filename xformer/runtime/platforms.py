"""Which jax backends a command may start: only those whose hardware is present.

With `.[tpu]` or `.[cuda]` installed on a machine without that chip (a laptop that uses
`xformer.compile`), jax would try the TPU or CUDA backend first and print libtpu's start-up
errors or a CUDA traceback before falling back to the CPU. Command-line entry points call
`use_present()` first; an explicit JAX_PLATFORMS always wins.
"""

from __future__ import annotations

import glob
import os


def tpu_present() -> bool:
  """TPU chips on this host's PCI bus (the check jax's own Cloud TPU start-up makes)."""
  try:
    from jax._src import hardware_utils  # pylint: disable=import-outside-toplevel
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # pylint: disable=broad-except
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def gpu_present() -> bool:
  return os.path.exists("/dev/nvidiactl") or bool(glob.glob("/dev/nvidia[0-9]*"))


def cpu_only() -> bool:
  """Whether this process computes on the CPU backend (JAX_PLATFORMS, else the hardware)."""
  chosen = os.environ.get("JAX_PLATFORMS", "")
  if chosen:
    return chosen.split(",")[0].strip() == "cpu"
  return not (tpu_present() or gpu_present())


def use_present() -> None:
  """Restricts jax to the backends whose hardware exists, unless JAX_PLATFORMS says otherwise.

  Must run before the first computation (it sets jax's `jax_platforms` option).
  """
  if os.environ.get("JAX_PLATFORMS"):
    return
  import jax  # pylint: disable=import-outside-toplevel
  if tpu_present():
    jax.config.update("jax_platforms", "tpu,cpu")
  elif gpu_present():
    jax.config.update("jax_platforms", "cuda,cpu")
  else:
    jax.config.update("jax_platforms", "cpu")


def compile_only_environment(accelerator_type: str) -> None:
  """What libtpu reads at start-up, set so that describing a slice on a host without TPUs is
  quiet (it otherwise asks the metadata server and logs errors); computation stays on CPU."""
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # No chip to guard: several compiling processes (parallel tests, a sweep) may load libtpu.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
