"""A gs:// data_dir through a local mirror.

TFDS's array_record files are written and read by array_record's own C++ file layer, which has
no gs:// without TensorFlow ("open() failed ... gs://..."). So a gs:// `data.data_dir` is the
shared, durable copy, and every host reads a local mirror of it under `MIRROR_ROOT`: a dataset
missing there is pulled from the bucket; one missing in the bucket too is prepared locally and
pushed, `dataset_info.json` last, so a reader never takes a half-pushed dataset for a complete one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from etils import epath

MIRROR_ROOT = "~/.cache/xformer/datasets"
_COMPLETE = "dataset_info.json"  # TFDS writes it last; so do we.


def local_root(remote_root: str) -> str:
  """The local mirror directory of a gs:// (or other remote) data_dir."""
  scheme, _, rest = remote_root.partition("://")
  return os.path.join(os.path.expanduser(MIRROR_ROOT), scheme, rest.strip("/"))


def _files(path: epath.Path, prefix: str = ""):
  for child in path.iterdir():
    if child.is_dir():
      yield from _files(child, f"{prefix}{child.name}/")
    else:
      yield f"{prefix}{child.name}"


def pull(remote: str, local: str) -> bool:
  """Copies the dataset directory `remote` to `local` if the bucket has it complete."""
  source = epath.Path(remote)
  if not (source / _COMPLETE).exists():
    return False
  logging.warning("Copying dataset %s to the local mirror %s (once per host).", remote, local)
  os.makedirs(os.path.dirname(local), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".pull_", dir=os.path.dirname(local))
  for name in _files(source):
    dest = epath.Path(tmp) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    (source / name).copy(dest, overwrite=True)
  try:
    os.rename(tmp, local)
  except OSError:  # Another process of this host pulled it first.
    shutil.rmtree(tmp, ignore_errors=True)
  return True


def push(local: str, remote: str, last: str = _COMPLETE) -> None:
  """Copies the local directory tree `local` to `remote` (a bucket or a local path), the file
  named `last` (a dataset's completion marker) after all others."""
  target = epath.Path(remote)
  names = sorted(_files(epath.Path(local)), key=lambda n: n == last)
  for name in names:
    dest = target / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    epath.Path(local, name).copy(dest, overwrite=True)
