"""What differs between the jax versions xformer supports (pyproject's floors to the pins), in
this one module: the rest of the package calls these and never asks jax its version."""

from __future__ import annotations

from typing import Any


def mesh_platform(abstract_mesh: Any) -> str:
  """"tpu", "gpu" or "cpu": the platform of a (non-empty) abstract mesh's devices.

  `AbstractDevice.platform` exists from jax 0.9; jax 0.8 knows only the device kind ("cpu",
  "TPU v5", "NVIDIA H100 80GB HBM3", ...).
  """
  device = abstract_mesh.abstract_device
  platform = getattr(device, "platform", None)
  if platform:
    return platform
  kind = device.device_kind.lower()
  return "tpu" if kind.startswith("tpu") else "cpu" if kind == "cpu" else "gpu"
