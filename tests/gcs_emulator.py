"""A Cloud Storage emulator on 127.0.0.1 (gcp-storage-emulator), with its gaps to real Cloud
Storage that xformer depends on filled, each as the service documents it:

- a download answers with the object's generation (header `x-goog-generation`): tensorstore's
  OCDBT layer (orbax's default format) needs it ("Malformed StorageGeneration" otherwise);
- writes and deletes honour the generation preconditions `ifGenerationMatch` (0: only if the
  object does not exist) and `ifGenerationNotMatch`, answering 412 Precondition Failed: the
  workdir lease on gs:// (xformer/workdir/lease.py) is a compare-and-swap built on them. The
  emulator ignores them (a second create-only upload succeeded), so without this the lease
  test could not fail.

The emulator serves one request at a time, so a precondition checked here and the write that
follows are atomic, as on the real service.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from http import HTTPStatus

from gcp_storage_emulator.handlers import objects

_PATCHED = "_xformer_filled"


def _current_generation(storage, bucket: str, name: str) -> int:
  """The live object's generation, 0 when there is none (GCS's meaning of 0)."""
  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except Exception:  # noqa: BLE001  (NotFound)
    return 0


def _upload_name(request) -> str | None:
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data
  if isinstance(data, dict):
    return (data.get("meta") or {}).get("name") or data.get("name")
  return None


def _preconditions_hold(request, storage, name: str | None) -> bool:
  if name is None:
    return True
  current = _current_generation(storage, request.params["bucket_name"], name)
  match, not_match = (request.query.get(k, [None])[0]
                      for k in ("ifGenerationMatch", "ifGenerationNotMatch"))
  return ((match is None or int(match) == current) and
          (not_match is None or int(not_match) != current))


def _with_preconditions(handler, name_of):
  @functools.wraps(handler)
  def wrapped(request, response, storage, *args, **kwargs):
    if not _preconditions_hold(request, storage, name_of(request)):
      response.status = HTTPStatus.PRECONDITION_FAILED
      response.json({"error": {"code": 412, "message": "conditionNotMet",
                               "errors": [{"reason": "conditionNotMet"}]}})
      return None
    return handler(request, response, storage, *args, **kwargs)
  return wrapped


def _with_generation(download):
  @functools.wraps(download)
  def handler(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    generation = _current_generation(storage, request.params["bucket_name"],
                                     request.params["object_id"])
    if generation:  # Not found: the 404 stands.
      response["x-goog-generation"] = str(generation)
  return handler


def _fill_gaps() -> None:
  """Patches the handlers before the server module binds them in its routes (once)."""
  if getattr(objects, _PATCHED, False):
    return
  objects.download = _with_generation(objects.download)
  objects.insert = _with_preconditions(objects.insert, _upload_name)
  objects.delete = _with_preconditions(objects.delete,
                                       lambda request: request.params["object_id"])
  setattr(objects, _PATCHED, True)


@contextlib.contextmanager
def serve(bucket: str = "bkt") -> Iterator[tuple[str, dict[str, str]]]:
  """A running emulator holding `bucket`: its URL, and the environment that points gcsfs,
  google-cloud-storage and tensorstore at it (set in os.environ too while it runs)."""
  _fill_gaps()
  from gcp_storage_emulator import server  # pylint: disable=import-outside-toplevel
  emulator = server.create_server("127.0.0.1", 0, in_memory=True, default_bucket=bucket)
  emulator.start()
  # Port 0: the OS picks a free port at bind time (no probe-then-bind race between workers).
  url = f"http://127.0.0.1:{emulator._api._httpd.server_address[1]}"  # pylint: disable=protected-access
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield url, env
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    emulator.stop()


def bucket_client(bucket: str = "bkt"):
  """A google-cloud-storage handle on the emulator's bucket (anonymous credentials)."""
  from google.auth.credentials import AnonymousCredentials  # pylint: disable=import-outside-toplevel
  from google.cloud import storage  # pylint: disable=import-outside-toplevel
  return storage.Client(credentials=AnonymousCredentials(), project="test").bucket(bucket)
