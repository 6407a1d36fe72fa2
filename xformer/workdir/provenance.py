"""What a run ran with: package versions, the xformer git commit, Python and the platform.

Every start of a run appends one line to `<workdir>/environment.jsonl`, and every checkpoint's
saved config carries the same record (`record.to_saved`), so a run moved elsewhere still says
what made it. `xformer.load` compares the run's record with the notebook's and warns on any
difference that can change numbers (a Colab runtime brings its own jax).
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Any
import warnings

from etils import epath

# The packages whose versions can change a run's numbers, or whether it loads.
PACKAGES = ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
            "tensorstore", "numpy", "grain", "tensorflow-datasets", "sentencepiece",
            "ml-collections", "sacrebleu")


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
  """The xformer checkout's commit ("<sha>+dirty" with uncommitted changes), or None."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return sha + ("+dirty" if dirty else "") if sha else None


@functools.lru_cache(maxsize=1)
def _record() -> dict[str, Any]:
  versions = {p: _version(p) for p in PACKAGES}
  return {"packages": {p: v for p, v in versions.items() if v},
          "xformer_commit": git_commit(), "xformer_version": _version("xformer"),
          "python": sys.version.split()[0], "platform": platform.platform()}


def current() -> dict[str, Any]:
  """This process's record (JSON-able; read once per process: every checkpoint saves it)."""
  return copy.deepcopy(_record())


def write(workdir: str) -> dict[str, Any]:
  """Appends this start's record to <workdir>/environment.jsonl; returns it."""
  rec = current()
  path = epath.Path(workdir) / "environment.jsonl"
  old = path.read_text() if path.exists() else ""
  path.write_text(old + json.dumps(rec, sort_keys=True) + "\n")  # Object stores cannot append.
  return rec


def differences(saved: dict[str, Any], now: dict[str, Any] | None = None) -> list[str]:
  """Human-readable differences between a run's record and this process's."""
  now = current() if now is None else now
  out = []
  for package in sorted(set(saved.get("packages", {})) | set(now["packages"])):
    a, b = saved.get("packages", {}).get(package), now["packages"].get(package)
    if a != b:
      out.append(f"{package} {a or 'absent'} -> {b or 'absent'}")
  if saved.get("xformer_commit") and saved.get("xformer_commit") != now.get("xformer_commit"):
    out.append(f"xformer commit {saved['xformer_commit']} -> {now.get('xformer_commit')}")
  return out


def warn_if_different(saved: dict[str, Any] | None, where: str) -> list[str]:
  """Warns (once, naming each difference) when `saved` differs from this process."""
  if not saved:
    return []
  diffs = differences(saved)
  if diffs:
    warnings.warn(f"{where} was trained with other versions than this process has: "
                  + "; ".join(diffs) + ". Numbers may differ slightly; a failure to load "
                  "names the mismatch.", stacklevel=3)
  return diffs
