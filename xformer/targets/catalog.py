"""Accelerator targets by their Cloud names, and their abstract devices for ahead-of-time compiles.

  parse("v5p-8")     -> 4 v5p chips (8 TensorCores, 4 megacore devices), topology v5p:2x2x1
  parse("2xv5p-64")  -> two v5p-64 slices joined over the data-center network
  parse("h100x8")    -> 8 H100 SXM GPUs in one host

TPU names count TensorCores for v4 and v5p (two per chip, run as one "megacore" device per chip,
as on the live slice) and chips for v5litepod and v6e (one core each). `devices(target)` gives
compile-only devices of the slice from libtpu (TPU) or from an XLA GPU target description (GPU)
on a host without the hardware (`python -m xformer.compile`).
"""

from __future__ import annotations

import dataclasses
import os
import re

from xformer import errors

_HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip: dense bf16 peak (TFLOP/s), memory (GiB), how Cloud counts it."""

  platform: str  # "tpu" | "cuda"
  peak_tflops: float
  hbm_gib: float
  topology_prefix: str = ""  # libtpu's name: "v5p" in "v5p:2x2x1".
  cores_per_unit: int = 1  # TPU: Cloud's name counts cores; this many per chip.
  dims: int = 3  # TPU torus dimensions (v5e, v6e: 2D).
  source: str = ""
  device_kind: str = ""  # jax's Device.device_kind on the live chip (a prefix for GPUs).


# Peaks are the vendors' dense bf16 figures per chip; HBM per chip.
CHIPS: dict[str, Chip] = {
    "v4": Chip("tpu", 275.0, 32.0, "v4", 2, 3, "cloud.google.com/tpu/docs/v4",
               "TPU v4"),
    "v5litepod": Chip("tpu", 197.0, 16.0, "v5e", 1, 2,
                      "cloud.google.com/tpu/docs/v5e", "TPU v5 lite"),
    "v5p": Chip("tpu", 459.0, 95.0, "v5p", 2, 3, "cloud.google.com/tpu/docs/v5p",
                "TPU v5"),
    "v6e": Chip("tpu", 918.0, 32.0, "v6e", 1, 2, "cloud.google.com/tpu/docs/v6e",
                "TPU v6 lite"),
    "h100": Chip("cuda", 989.0, 80.0, source="NVIDIA H100 SXM datasheet (dense BF16)",
                 device_kind="NVIDIA H100"),
    "h200": Chip("cuda", 989.0, 141.0, source="NVIDIA H200 SXM datasheet (dense BF16)",
                 device_kind="NVIDIA H200"),
    "a100": Chip("cuda", 312.0, 80.0, source="NVIDIA A100 80GB SXM datasheet (dense BF16)",
                 device_kind="NVIDIA A100"),
}


def chip_of_device_kind(kind: str) -> Chip | None:
  """The Chip a live device is (`jax.devices()[0].device_kind`), None if not in CHIPS."""
  exact = [c for c in CHIPS.values() if c.platform == "tpu" and c.device_kind == kind]
  return exact[0] if exact else next(
      (c for c in CHIPS.values() if c.platform == "cuda" and kind.startswith(c.device_kind)), None)


# XLA GpuTargetConfig descriptions (published specifications of each GPU).
GPU_TARGET_FILES = {name: os.path.join(_HERE, "gpu", f"{name}.pbtxt")
                    for name in ("h100", "h200", "a100")}


@dataclasses.dataclass(frozen=True)
class Target:
  """A slice (or GPU host) to compile for.

  Attributes:
    name: the Cloud name it was parsed from. chip: its Chip. chip_name: key of CHIPS.
    chips: chips per slice. num_slices: slices joined over DCN (multi-slice), else 1.
    topology: libtpu topology name ("v5p:2x2x1"); GPU: "1x1xN".
  """

  name: str
  chip_name: str
  chip: Chip
  chips: int
  num_slices: int
  topology: str

  @property
  def devices(self) -> int:
    """Devices jax sees: one per chip (megacore TPUs, single-core TPUs, GPUs), all slices."""
    return self.chips * self.num_slices

  @property
  def platform(self) -> str:
    return self.chip.platform


def torus_dims(chips: int, dims: int) -> tuple[int, ...]:
  """The slice shape Cloud gives `chips` chips: 3D 4->2x2x1, 8->2x2x2, 16->2x2x4, 32->2x4x4,
  64->4x4x4; 2D 4->2x2, 8->2x4, 16->4x4, 32->4x8 (the last of the smallest sides doubles)."""
  if chips < 1 or chips & (chips - 1):
    raise errors.ConfigError(f"a TPU slice has a power-of-two number of chips, not {chips}.")
  shape = [1] * dims
  if dims == 3 and chips >= 4:
    shape = [2, 2, 1]
  while _prod(shape) < chips:
    smallest = min(shape)
    last = max(i for i, s in enumerate(shape) if s == smallest)
    shape[last] *= 2
  return tuple(shape)


def _prod(xs) -> int:
  out = 1
  for x in xs:
    out *= x
  return out


def parse(name: str) -> Target:
  """A Target from a Cloud name: v4-8, v5p-128, v5litepod-16, v6e-8, 2xv5p-64, h100, h100x8."""
  m = re.fullmatch(r"(?:(\d+)x)?(v4|v5p|v5litepod|v6e)-(\d+)", name)
  if m:
    slices, chip_name, count = int(m.group(1) or 1), m.group(2), int(m.group(3))
    chip = CHIPS[chip_name]
    if count % chip.cores_per_unit:
      raise errors.ConfigError(f"{name}: {chip_name} slices count TensorCores, "
                               f"{chip.cores_per_unit} per chip; {count} is not a multiple.")
    chips = count // chip.cores_per_unit
    dims = torus_dims(chips, chip.dims)
    return Target(name, chip_name, chip, chips, slices,
                  f"{chip.topology_prefix}:{'x'.join(map(str, dims))}")
  m = re.fullmatch(r"(h100|h200|a100)(?:x(\d+))?", name)
  if m:
    gpus = int(m.group(2) or 1)
    return Target(name, m.group(1), CHIPS[m.group(1)], gpus, 1, f"1x1x{gpus}")
  raise errors.UnknownNameError(
      f"unknown target {name!r}. Valid: TPU slices v4-N, v5p-N (N TensorCores, 2 per chip), "
      "v5litepod-N, v6e-N (N chips), multi-slice KxNAME (e.g. 2xv5p-64); GPUs h100, h200, a100, "
      "optionally xN GPUs per host (h100x8).")


def abstract_devices(target: Target) -> list:
  """Compile-only devices of `target` (no hardware needed): libtpu's topology for TPUs, an XLA
  GPU target description for GPUs (needs the CUDA plugin, `pip install -e ".[cuda]"`)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  if target.platform == "tpu":
    kw = {"chips_per_host_bounds": (2, 2, 1) if target.chips >= 4 else (1, 1, 1)}
    if target.chip.cores_per_unit > 1:
      kw["chip_config_name"] = "megacore"
    if target.num_slices > 1:
      kw["num_slices"] = target.num_slices
    return list(topologies.get_topology_desc(target.topology, "tpu", **kw).devices)
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  with open(GPU_TARGET_FILES[target.chip_name], encoding="utf-8") as f:
    text = f.read()
  try:
    desc = topologies.get_topology_desc("gpu", "cuda", target_config=text,
                                        topology=target.topology)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"cannot compile for {target.name}: the CUDA plugin is missing or "
                           f"failed ({str(e).splitlines()[0][:200]}). Install it with "
                           "pip install -e \".[cuda]\".") from e
  return list(desc.devices)
