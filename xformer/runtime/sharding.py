"""Device mesh, logical-axis rules and data placement; multi-process start-up.

Parameters carry logical axis names (xformer.layers); the rules below map them onto the mesh
axes `data`, `fsdp` and `tensor`. The batch is split over data x fsdp; `fsdp` also shards the
embed dimension of parameters (ZeRO-3 style), `tensor` shards heads, mlp and vocab.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from xformer import errors
from xformer.runtime import platforms

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("layers", None),
)


def maybe_initialize_distributed() -> None:
  """`jax.distributed.initialize()` when launched as one of several processes.

  Cloud TPU pod slices are detected by jax itself; elsewhere the standard variables
  (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) say it.
  """
  if jax.distributed.is_initialized():
    return
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # (Asking jax would start the backend.)
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif (os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID")) and (
      platforms.tpu_present()):  # (Not a compile-only environment: platforms.py.)
    jax.distributed.initialize()
  if jax.process_count() > 1:
    logging.info("Process %d of %d, %d local devices.", jax.process_index(), jax.process_count(),
                 jax.local_device_count())


def make_mesh(shape: dict[str, int], devices=None) -> Mesh:
  """A mesh over `devices` (default all) with axes data/fsdp/tensor; one size may be -1.

  The devices are laid out over the physical topology (`jax.experimental.mesh_utils`): within
  a TPU slice the tensor and fsdp axes get the ICI neighbours; across slices (multi-slice,
  devices with a `slice_index`) the data axis spans the data-center network, each slice holding
  data / num_slices of it. Elsewhere (CPU, GPU) this is the devices in order.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = _resolve_sizes(shape, len(devices))
  slices = 1 + max(getattr(d, "slice_index", 0) or 0 for d in devices)
  if slices > 1:
    if sizes[0] % slices:
      raise errors.ConfigError(
          f"mesh {dict(zip(MESH_AXES, sizes))}: the data axis spans the {slices} slices, so "
          f"mesh.data must be a multiple of {slices}.")
    ici = [sizes[0] // slices, *sizes[1:]]
    array = mesh_utils.create_hybrid_device_mesh(ici, [slices, 1, 1], devices)
  else:
    array = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
  return Mesh(array, MESH_AXES)


def _resolve_sizes(shape: dict[str, int], num_devices: int) -> list[int]:
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise errors.ConfigError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise errors.ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are "
                               f"not divisible by {known}.")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise errors.ConfigError(
        f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, there are "
        f"{num_devices}: set config.mesh sizes whose product is {num_devices} (one may be -1).")
  return sizes


def param_shardings(logical_specs: Any, mesh: Mesh) -> Any:
  """Logical PartitionSpecs (per parameter) -> NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def over_batch_devices(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  """`sharding` also split over the batch axes (data x fsdp) that it does not use yet, on its
  largest dimension they divide (after the split it already has): the layout of optimizer
  state split over the data-parallel replicas (ZeRO stage 1). Unchanged when none fits."""
  mesh = sharding.mesh
  spec = [(e if isinstance(e, tuple) else (e,)) if e else () for e in sharding.spec]
  spec += [()] * (len(shape) - len(spec))
  used = {a for entry in spec for a in entry}
  free = tuple(a for a in BATCH_AXES if a not in used and mesh.shape[a] > 1)
  if not free:
    return sharding
  ways = lambda axes: int(np.prod([mesh.shape[a] for a in axes]))  # noqa: E731
  for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[i] % (ways(spec[i]) * ways(free)) == 0:
      spec[i] = spec[i] + free
      return NamedSharding(mesh, P(*[e if len(e) > 1 else (e[0] if e else None) for e in spec]))
  return sharding


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded over the batch axes (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
