"""Checkpoints with orbax: train state, data-iterator state and config, on any topology.

A step directory holds the items `params` and `opt_state` (tensorstore arrays), `data_iter`
(grain's per-process JSON) and `config` (JSON). Parameters can be restored alone, so a notebook
or `init_from` never materialises optimizer state, and onto any devices: the caller gives the
target shardings (8 devices at save time -> 1 CPU at restore time works).

Saves are asynchronous: `save` returns once arrays are copied off the devices; `wait()` or
`close()` blocks until they are on disk. Orbax writes into a temporary directory and renames it
when complete, so a crash mid-save never damages the previous checkpoint. A save that fails in
the background (no space, permission, quota, a vanished bucket) is raised by `check()` once it
has ended, as an errors.StorageError naming the cause and the newest complete step.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from xformer import errors

ITEMS = ("params", "opt_state", "data_iter", "config")


class CheckpointMismatchError(ValueError):
  """A checkpoint whose parameters do not match the model the config builds."""


class CorruptCheckpointError(RuntimeError):
  """A step directory that cannot be read back (missing items or files, damaged metadata)."""


def _path_str(path) -> str:
  """'decoder/layers/ffn/wi/kernel' for dict keys, list indices and named-tuple fields alike (so
  optimizer states compare with the dicts orbax's metadata holds)."""
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def compare_shapes(saved: Any, expected: Any, what: str = "params") -> None:
  """Raises CheckpointMismatchError naming every parameter path whose shape (or presence)
  differs between the checkpoint's metadata `saved` and the `expected` abstract tree."""
  saved_flat = {_path_str(p): tuple(getattr(v, "shape", ()))
                for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
  want_flat = {_path_str(p): tuple(getattr(v, "shape", ()))
               for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  problems = []
  for path in sorted(set(saved_flat) | set(want_flat)):
    if path not in want_flat:
      problems.append(f"  {what}/{path}: in the checkpoint {saved_flat[path]}, "
                      "not in the model the config builds")
    elif path not in saved_flat:
      problems.append(f"  {what}/{path}: expected {want_flat[path]}, missing from the checkpoint")
    elif saved_flat[path] != want_flat[path]:
      problems.append(f"  {what}/{path}: checkpoint shape {saved_flat[path]}, "
                      f"expected shape {want_flat[path]}")
  if problems:
    shown = "\n".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more"
                                       if len(problems) > 20 else "")
    raise CheckpointMismatchError(
        f"The checkpoint does not match the model built from the config ({len(problems)} "
        f"parameters differ):\n{shown}\nUse the config the checkpoint was trained with "
        "(saved in its `config` item), or a new workdir.")


def _abstract(tree: Any, shardings: Any | None) -> Any:
  """ShapeDtypeStructs with target shardings (default: one device) for restoring."""
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class Checkpointer:
  """An orbax CheckpointManager for one run directory."""

  def __init__(self, directory: str, keep: int | None = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = directory if "://" in directory else os.path.abspath(
        os.path.expanduser(directory))  # gs://... stays as it is.
    if not read_only:
      self._remove_unfinished_saves()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=async_save, read_only=read_only,
        # Orbax's own clean-up runs in a background future that close() does not await (it
        # can die at interpreter exit and leave the directory): see _remove_unfinished_saves.
        cleanup_tmp_directories=False, create=not read_only)
    handlers = {"params": ocp.StandardCheckpointHandler(),
                "opt_state": ocp.StandardCheckpointHandler(),
                "data_iter": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS,
                                         item_handlers=handlers)
    self._pending: int | None = None  # The step whose background save may still fail.

  def _remove_unfinished_saves(self) -> None:
    """Deletes `<step>.orbax-checkpoint-tmp*` directories: saves a crash interrupted before
    their final rename. They were never checkpoints; the previous step is intact."""
    root = epath.Path(self.directory)
    if jax.process_index() == 0 and root.is_dir():
      for path in sorted(root.iterdir()):
        if ".orbax-checkpoint-tmp" in path.name:
          logging.warning("Removing unfinished save %s (interrupted by a crash).", path)
          path.rmtree(missing_ok=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("xformer_remove_unfinished_saves")

  def _check_writable(self) -> None:
    """A probe write before each save: a directory that vanished, became unwritable or whose
    disk is full fails here at once (orbax itself can block for minutes on a failed save)."""
    probe = epath.Path(self.directory) / f".probe.{jax.process_index()}"
    try:
      probe.write_text("ok")
      probe.unlink()
    except OSError as e:
      raise errors.StorageError(
          f"Cannot write checkpoints to {self.directory} ({errors.write_cause(e)}); the newest complete "
          f"checkpoint is step {self._newest_complete()}.") from e

  def _failed(self, error: BaseException) -> errors.StorageError:
    """The one-line StorageError of the pending save's failure."""
    step, self._pending = self._pending, None
    return errors.StorageError(
        f"Saving checkpoint {step} failed: {errors.write_cause(error)} (writing {self.step_dir(step)}). "
        f"The newest complete checkpoint is step {self._newest_complete()}; rerunning the "
        "same command once that is fixed resumes from it (and removes the unfinished save).")

  def check(self) -> None:
    """Raises StorageError if the last save has ended in failure; cheap while it runs."""
    if self._pending is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def complete_steps(self) -> list[int]:
    """Steps whose save finished (their directory has its final name); when the directory
    itself is gone or unreadable, the steps this run's saves completed."""
    if not epath.Path(self.directory).is_dir():
      return [s for s in self.steps() if s != self._pending]
    return [s for s in self.steps() if epath.Path(self.step_dir(s)).exists()]

  def _newest_complete(self) -> int | None:
    return max(self.complete_steps(), default=None)

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params: Any, opt_state: Any, data_iter: Any,
           config: dict[str, Any]) -> bool:
    """Starts an (async) save of step `step`; False if that step is already saved."""
    if step in self.steps():
      return False
    if self._pending is not None:
      self.wait()  # Orbax would wait for it too; its failure is the cause to report, first.
    self._check_writable()
    args = {"params": ocp.args.StandardSave(params), "opt_state": ocp.args.StandardSave(opt_state),
            "config": ocp.args.JsonSave(config)}
    if data_iter is not None:
      args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    self._pending = step
    try:
      return self.manager.save(step, args=ocp.args.Composite(**args), force=True)
    except Exception as e:  # noqa: BLE001  (orbax, tensorstore and the OS raise many kinds)
      raise self._failed(e) from e

  def item_metadata(self, step: int, item: str) -> Any:
    meta = self.manager.item_metadata(step)[item]
    return getattr(meta, "tree", meta)

  def restore_config(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]

  def step_dir(self, step: int) -> str:
    return str(epath.Path(self.directory) / str(step))

  def _metadata(self, step: int, item: str) -> Any:
    """An item's tree metadata; CorruptCheckpointError when it is missing or unreadable."""
    path = epath.Path(self.step_dir(step)) / item
    if not (path / "_METADATA").is_file():
      raise CorruptCheckpointError(f"Checkpoint {self.step_dir(step)} is incomplete: "
                                   f"{path}/_METADATA is missing.")
    try:
      return self.item_metadata(step, item)
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
      raise CorruptCheckpointError(f"Checkpoint {self.step_dir(step)}: cannot read the "
                                   f"metadata of {item!r} ({type(e).__name__}: {e}).") from e

  def _restore(self, step: int, args: dict[str, Any]) -> dict[str, Any]:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f"Checkpoint {self.step_dir(step)} cannot be read back "
                                   f"({type(e).__name__}: {str(e)[:500]}).") from e

  def restore_params(self, step: int, abstract_params: Any, shardings: Any | None = None) -> Any:
    """Only the parameters of `step`, placed per `shardings` (default: one local device)."""
    compare_shapes(self._metadata(step, "params"), abstract_params)
    out = self._restore(step, {"params": ocp.args.StandardRestore(
        _abstract(abstract_params, shardings))})
    return out["params"]

  def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any,
              param_shardings: Any, opt_shardings: Any, data_iter: Any | None) -> tuple[Any, Any]:
    """Parameters, optimizer state and (in place) the data iterator of `step`.

    Raises:
      CheckpointMismatchError: shapes differ from the model's (the config is wrong).
      CorruptCheckpointError: the step cannot be read (the checkpoint is damaged).
    """
    compare_shapes(self._metadata(step, "params"), abstract_params)
    compare_shapes(self._metadata(step, "opt_state"), abstract_opt_state, "opt_state")
    args = {"params": ocp.args.StandardRestore(_abstract(abstract_params, param_shardings)),
            "opt_state": ocp.args.StandardRestore(_abstract(abstract_opt_state, opt_shardings))}
    if data_iter is not None and not self._has_item(step, "data_iter"):
      raise FileNotFoundError(f"Checkpoint {step} in {self.directory} has no data-iterator "
                              "state (an averaged or imported checkpoint?): use it through "
                              "--config.init_from instead of resuming from it.")
    out = self._restore(step, args)
    if data_iter is not None:  # Separately: a mismatch here is the config's, not damage.
      self._restore_data_iter(step, data_iter)
    return out["params"], out["opt_state"]

  def _restore_data_iter(self, step: int, data_iter: Any) -> None:
    """grain's per-process state (`process_i-of-n.json`), or, saved by another number of
    processes, every process's file: a `ShardedBatches` takes its logical shards from them."""
    directory = epath.Path(self.step_dir(step)) / "data_iter"
    own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if (directory / own).exists() or not hasattr(data_iter, "set_global_state"):
      self.manager.restore(step, args=ocp.args.Composite(
          data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
      return
    files = {int(p.name.split("_")[1].split("-")[0]): p for p in directory.iterdir()
             if p.name.startswith("process_") and p.name.endswith(".json")}
    if not files or sorted(files) != list(range(len(files))):
      raise ValueError(f"Data iterator state in {directory} is incomplete: {sorted(files)}.")
    states = []
    for i in sorted(files):
      states += json.loads(files[i].read_text())
    logging.info("Data iterator saved by %d processes, restored on %d.", len(files),
                 jax.process_count())
    data_iter.set_global_state(states)

  def quarantine(self, step: int) -> str:
    """Renames a damaged step directory to `<step>.damaged` (kept for inspection, no longer a
    step, so the run can save that step again); returns the new path."""
    target = f"{self.step_dir(step)}.damaged"
    if jax.process_index() == 0:
      if epath.Path(target).exists():
        target = f"{target}.{int(time.time())}"
      epath.Path(self.step_dir(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"xformer_quarantine_{step}")
    self.manager.reload()
    return target

  def _has_item(self, step: int, item: str) -> bool:
    return (epath.Path(self.step_dir(step)) / item).is_dir()

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()  # Raises a failed background save's error, once.
    except Exception as e:  # noqa: BLE001
      if self._pending is None:
        raise
      raise self._failed(e) from e
    self._pending = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
