"""What a run records about itself, and reading it back in any later code.

Every checkpoint stores the run's config (`to_saved`): the config itself, plus the modules that
registered its positional encoding and its task, so that `xformer.load` can import them before
rebuilding the model (an encoding defined in a user's module would otherwise be unknown in a
notebook). A module of xformer's own that has since moved is found through `MOVED_MODULES`. `from_saved` reads any saved config back as a
ConfigDict of today's layout: older layouts are upgraded, keys added since get their defaults.
"""

from __future__ import annotations

import copy
import importlib
import logging
from typing import Any

import ml_collections

from xformer import config_lib, errors, positional, tasks
from xformer.workdir import provenance

_REGISTERED_BY = "registered_by"  # Saved-config key: {"posemb": module, "task": module}.
_ENVIRONMENT = "environment"  # Saved-config key: provenance.current() of the saving process.
# Saved keys that are not config fields.
EXTRA_KEYS = (_REGISTERED_BY, "averaged_steps", _ENVIRONMENT)
# xformer's modules that registered encodings or tasks and moved since: old name -> new. Add a
# line whenever such a module moves; runs record the name of the day they were written.
MOVED_MODULES = {
    "xformer.positional_recent": "xformer.positional",  # xpos, fire, kerple_log (flat layout)
    "xformer.positional_math": "xformer.positional",
}


def to_saved(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a checkpoint stores it (JSON-able)."""
  saved = config.to_dict()
  modules = {"posemb": positional.get(config.model.posemb).__module__,
             "task": type(tasks.get(config.task)).__module__}
  saved[_REGISTERED_BY] = modules
  saved[_ENVIRONMENT] = provenance.current()
  return saved


def environment(saved: dict[str, Any]) -> dict[str, Any] | None:
  """The versions and commit a saved config was written with (None before they were kept)."""
  return saved.get(_ENVIRONMENT)


def import_registrants(saved: dict[str, Any]) -> None:
  """Imports the user modules that registered the run's encoding and task."""
  for what, module in saved.get(_REGISTERED_BY, {}).items():
    module = MOVED_MODULES.get(module, module)
    name = saved["model"]["posemb"] if what == "posemb" else saved["task"]
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise errors.UnknownNameError(
          f"This run's {'positional encoding' if what == 'posemb' else 'task'} {name!r} was "
          f"registered by the module {module!r}, which cannot be imported here ({e}). Put it on "
          f"the Python path (or `import {module}`) before loading the run.") from e


def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config of an older layout, in today's (see config_lib.VERSION)."""
  saved = copy.deepcopy(saved)
  if saved.get("version", 1) < 2:
    model = saved["model"]
    kwargs = model.get("posemb_kw") or {}
    if not all(isinstance(v, dict) for v in kwargs.values()) or not kwargs:
      model["posemb_kw"] = {model["posemb"]: kwargs}  # Flat: the one encoding's arguments.
    model.pop("src_vocab_size", None)  # One tokenizer serves both sides.
    if model.get("attention_impl") is None:
      model["attention_impl"] = "xla"
    saved["version"] = 2
  rope = saved["model"].get("posemb_kw", {}).get("rope")
  if rope is not None and rope.get("scaling") == "yarn" and "yarn_ramp" not in rope:
    rope["yarn_ramp"] = "ratio"  # Trained with YaRN before the reference ramp was the default.
  return saved


def from_saved(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """A saved config (checkpoint item `config`) as today's ConfigDict, locked."""
  import_registrants(saved)
  saved = upgrade(saved)
  config = config_lib.common(saved["task"])
  config.model = config_lib.model_section(saved["model"]["variant"], saved["model"]["posemb"])
  dropped = _merge(config, {k: v for k, v in saved.items() if k not in EXTRA_KEYS}, "")
  if dropped:
    logging.info("Saved config keys no longer used, ignored: %s", dropped)
  config.lock()
  return config


def _merge(config: ml_collections.ConfigDict, saved: dict[str, Any], prefix: str) -> list[str]:
  """Writes saved values into config; returns the keys config no longer has."""
  dropped = []
  for key, value in saved.items():
    if key not in config:
      dropped.append(prefix + key)
    elif isinstance(value, dict) and isinstance(config[key], ml_collections.ConfigDict):
      if key == "posemb_kw":  # Encodings registered now but not then keep their defaults.
        for name, kwargs in value.items():
          known = config[key][name].to_dict() if name in config[key] else {}
          config[key][name] = {**known, **kwargs}
      else:
        dropped += _merge(config[key], value, f"{prefix}{key}.")
    else:
      config[key] = value
  return dropped
