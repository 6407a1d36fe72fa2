"""The glibc malloc re-exec of the command-line entry points (xformer/runtime/host_memory.py)."""

import os
import platform
import shutil
import subprocess
import sys

import pytest

from xformer.runtime import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="GLIBC_TUNABLES needs glibc Linux")

# Prints its pid, arguments and tunables before and after the re-exec call, then counts the page
# faults of allocating (and freeing) a 64 MiB array 20 times, as XLA:CPU does with step buffers.
SCRIPT = """
import importlib.util, os, resource, sys
import numpy as np
# The module alone, not the package: what else the package imports changes malloc's behaviour.
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[0].replace(
    "probe.py", "host_memory.py"))
host_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_memory)
print("before", os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"), flush=True)
host_memory.reexec_with_tunables()
print("after", os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"), flush=True)
a = np.ones(16 << 20, np.float32); del a
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  a = np.ones(16 << 20, np.float32); del a
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _run(tmp_path, **env):
  script = tmp_path / "probe.py"
  script.write_text(SCRIPT)
  shutil.copy(host_memory.__file__, tmp_path / "host_memory.py")
  environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",
                                                                host_memory.OPT_OUT)}
  environ.update(env, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-u", str(script), "--x=1", "two words"], env=environ,
                       capture_output=True, text=True, check=True, timeout=120).stdout
  return [tuple(line.split(" ", 1)) for line in out.splitlines()]


def test_reexecs_once_in_place_with_arguments_and_fewer_page_faults(tmp_path):
  lines = _run(tmp_path)
  pid = lines[0][1].split()[0]
  args = "['--x=1', 'two words']"
  # Once without the tunables, then (same pid, same arguments) with them, and no second re-exec.
  assert lines[0] == ("before", f"{pid} {args} None")
  assert lines[1] == ("before", f"{pid} {args} {host_memory.TUNABLES}")
  assert lines[2] == ("after", f"{pid} {args} {host_memory.TUNABLES}")
  tuned = int(lines[3][1])
  plain = int(_run(tmp_path, XFORMER_MALLOC="0")[2][1])
  # 20 x 64 MiB handed back to the kernel and faulted in again (>= 32 faults each even with
  # numpy's 2 MiB huge pages)...
  assert plain >= 20 * 32, plain
  assert tuned < plain / 10, (tuned, plain)  # ...or kept in the process.


def test_opt_out_and_a_users_own_tunables_are_left_alone(tmp_path):
  lines = _run(tmp_path, XFORMER_MALLOC="0")
  assert [tag for tag, _ in lines] == ["before", "after", "faults"]
  assert lines[1][1].endswith("None")
  lines = _run(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=2")
  assert [tag for tag, _ in lines] == ["before", "after", "faults"]
  assert lines[1][1].endswith("glibc.malloc.arena_max=2")


def test_no_reexec_when_an_accelerator_backend_computes(tmp_path):
  # On a TPU or GPU host the tunables buy nothing (the runtime owns device memory).
  lines = _run(tmp_path, JAX_PLATFORMS="tpu,cpu")
  assert [tag for tag, _ in lines] == ["before", "after", "faults"]
  assert lines[1][1].endswith("None")

