"""`--config.profile_steps=START,COUNT`: a jax.profiler trace of training steps START to
START + COUNT - 1, written to `<workdir>/profile` (open it with TensorBoard's profile plugin or
XProf: `tensorboard --logdir <workdir>/profile`).

The trace is written to a local directory and copied to the workdir afterwards, so a gs://
workdir works the same (the profiler itself writes local files only).
"""

from __future__ import annotations

import shutil
import tempfile
import time

from etils import epath
import jax

from xformer import errors
from xformer.data import mirror
from xformer.runtime.metric_writer import log_line


def parse(spec: str) -> tuple[int, int] | None:
  """"START,COUNT" -> (START, COUNT); "" -> None; anything else a ConfigError."""
  if not spec:
    return None
  try:
    start, count = (int(x) for x in str(spec).split(","))
  except ValueError:
    start = count = 0
  if start < 1 or count < 1:
    raise errors.ConfigError(f"profile_steps={spec!r}: expected 'START,COUNT' with START >= 1 "
                             "and COUNT >= 1 (e.g. '10,5': steps 10 to 14), or '' for none.")
  return start, count


class StepProfiler:
  """Starts the trace before step START and stops it after step START + COUNT - 1."""

  def __init__(self, spec: str, workdir: str):
    self.window = parse(spec)
    self.workdir = workdir
    self.local: str | None = None
    self.started = 0.0

  def before(self, step: int) -> None:
    if self.window and step == self.window[0]:
      self.local = tempfile.mkdtemp(prefix="xformer_profile_")
      jax.profiler.start_trace(self.local)
      self.started = time.time()

  def after(self, step: int, state) -> None:
    if self.local is None or step != self.window[0] + self.window[1] - 1:
      return
    jax.block_until_ready(state)  # The traced steps' device work belongs in the trace.
    jax.profiler.stop_trace()
    target = epath.Path(self.workdir) / "profile"
    mirror.push(self.local, str(target))  # Local files, to a local or gs:// workdir.
    shutil.rmtree(self.local, ignore_errors=True)
    log_line(f"Profiled steps {self.window[0]}..{step} ({time.time() - self.started:.1f}s); "
             f"trace in {target} (tensorboard --logdir {target})")
    self.local = None
