"""glibc malloc settings for XLA:CPU, applied by re-executing the command line once.

XLA:CPU allocates every temporary buffer of a step afresh and frees it at the end (a few hundred
MB per step for a small Transformer). With glibc's defaults the large ones are mmap'd and freed
memory is handed back to the kernel, so each step page-faults all of it in again (`perf` showed
a large share of a CPU train step's time in the kernel zeroing and mapping pages). These
tunables keep freed memory in the process and back the heap with transparent huge pages, so the
faults mostly disappear; benchmarks/README.md has the measured effect on step time.

glibc reads GLIBC_TUNABLES only at process start, hence the re-exec: `os.execv` keeps the pid,
arguments and environment (plus the tunables), so launchers, signal handlers set up by a parent
and `jax.distributed` see the same process. Nothing happens when GLIBC_TUNABLES is already set
(the user's choice wins; also stops a second re-exec), off glibc Linux, with XFORMER_MALLOC=0,
or when the process will not compute on the CPU backend (a TPU or GPU host: the accelerator's
runtime owns the device memory and pins host buffers itself, so the tunables buy nothing there
and a re-exec only delays start-up; `platforms.cpu_only`).
The cost is one more interpreter start and package import, and a resident set that stays at its
peak instead of shrinking between steps, as with tcmalloc or jemalloc.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = ":".join([
    "glibc.malloc.hugetlb=1",  # madvise(MADV_HUGEPAGE) on the heap: 2 MiB pages, 512x fewer faults.
    "glibc.malloc.mmap_threshold=4294967296",  # Serve buffers up to 4 GiB from the heap...
    "glibc.malloc.trim_threshold=4294967296",  # ...and keep freed heap memory for the next step.
    "glibc.malloc.arena_max=1",  # One heap: XLA's worker threads reuse the main thread's memory.
])
OPT_OUT = "XFORMER_MALLOC"


def wanted() -> bool:
  """Whether `reexec_with_tunables` would re-execute this process."""
  return (os.environ.get(OPT_OUT, "1") != "0" and "GLIBC_TUNABLES" not in os.environ
          and sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
          and _cpu_only())


def _cpu_only() -> bool:
  # Imported here, last: the checks above are free, and importing the package starts jax.
  from xformer.runtime import platforms  # pylint: disable=import-outside-toplevel
  return platforms.cpu_only()


def reexec_with_tunables() -> None:
  """Re-executes the current command line with GLIBC_TUNABLES = TUNABLES (see the module doc).

  Call it first thing in a command-line entry point, before threads or devices are started;
  never from library code (a notebook kernel must not be replaced).
  """
  if not wanted():
    return
  os.environ["GLIBC_TUNABLES"] = TUNABLES
  sys.stdout.flush()
  sys.stderr.flush()
  # orig_argv (Python >= 3.10) keeps interpreter options and `-m module`, unlike sys.argv.
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
