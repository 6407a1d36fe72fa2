"""Preparing a TFDS dataset as array_record: from the network, or from raw files at hand.

`download_and_prepare(builder, raw_dir=None)` runs the builder's own preparation code. With
`raw_dir`, every URL the builder asks for is served from that directory instead of the network:
the file or directory named like the URL's last path component (`training-parallel-nc-v9.tgz`,
or that archive already extracted under the same name). Archives are extracted once, next to
them. No checksum is verified on that path: the files are used as given (a mirror's copies, or
the tests' few fake files in the real layout).

TFDS's lm1b builder lists its files with `tf.io.gfile.glob`, the one use of TensorFlow in the
builders xformer ships configs for; `download_and_prepare` gives it Python's glob instead, so
no TensorFlow is needed to prepare anything.
"""

from __future__ import annotations

import glob
import logging
import os
import tarfile
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from xformer import errors


class MissingRawFileError(errors.UserError, FileNotFoundError):
  """A raw file the builder needs is not in raw_dir."""


class LocalRawFiles:
  """A download manager that serves URLs from a local directory (see the module docstring);
  everything else is the real manager's."""

  def __init__(self, raw_dir: str, manager: Any):
    self._raw_dir, self._manager = epath.Path(raw_dir), manager

  def __getattr__(self, name: str) -> Any:
    return getattr(self._manager, name)

  def download(self, urls: Any) -> Any:
    return _map(lambda url: self._path(url), urls)

  def download_and_extract(self, urls: Any) -> Any:
    return _map(lambda url: _extracted(self._path(url)), urls)

  def _path(self, url: str) -> epath.Path:
    path = self._raw_dir / url.rstrip("/").split("/")[-1]
    if not path.exists():
      raise MissingRawFileError(f"{url} is needed, and raw_dir has no {path.name}: put the file "
                                f"(or its extracted directory) at {path}.")
    return path


def _map(fn, tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _map(fn, v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_map(fn, v) for v in tree)
  return fn(tree)


def _extracted(path: epath.Path) -> epath.Path:
  """A directory as it is; a tar archive extracted (once) into `<path>.extracted`."""
  if path.is_dir() or not tarfile.is_tarfile(path):
    return path
  target = epath.Path(f"{path}.extracted")
  if not target.exists():
    logging.info("Extracting %s", path)
    with tarfile.open(path) as archive:
      archive.extractall(f"{target}.tmp", filter="data")
    epath.Path(f"{target}.tmp").rename(target)
  return target


def _python_glob(directory: str, pattern: str) -> list[str]:
  return sorted(glob.glob(os.path.join(directory, pattern)))


def _without_tensorflow(builder: tfds.core.DatasetBuilder) -> None:
  """Points TFDS's lm1b file listing at Python's glob (it calls tf.io.gfile.glob)."""
  module = __import__(type(builder).__module__, fromlist=["_"])
  if builder.name == "lm1b" and hasattr(module, "_TRAIN_FILE_FORMAT"):
    module._train_data_filenames = lambda d: _python_glob(d, module._TRAIN_FILE_FORMAT)  # pylint: disable=protected-access
    module._test_data_filenames = lambda d: _python_glob(d, module._HELDOUT_FILE_FORMAT)  # pylint: disable=protected-access


def download_and_prepare(builder: tfds.core.DatasetBuilder, raw_dir: str | None = None) -> None:
  """Prepares `builder` as array_record in its data_dir (see the module docstring)."""
  _without_tensorflow(builder)
  if raw_dir:
    make = builder._make_download_manager  # pylint: disable=protected-access
    builder._make_download_manager = lambda **kw: LocalRawFiles(raw_dir, make(**kw))  # pylint: disable=protected-access
  builder.download_and_prepare(file_format="array_record")
