"""A run written under one set of versions loads, translates and scores the same under another:
the pins (constraints.txt) and the floors (constraints-floor.txt), both ways.

Needs the other environment's Python in XFORMER_OTHER_PYTHON (.ci/run makes both venvs);
skipped without it.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

OTHER = os.environ.get("XFORMER_OTHER_PYTHON", "")
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cross_version_probe.py")

pytestmark = [pytest.mark.crossversion, pytest.mark.skipif(
    not OTHER, reason="set XFORMER_OTHER_PYTHON to the other environment's python (.ci/run)")]


def _probe(python, *args):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  out = subprocess.run([python, PROBE, *args], capture_output=True, text=True, timeout=900,
                       check=False, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("writer, reader", [("this", "other"), ("other", "this")])
def test_a_run_reloads_across_versions(tmp_path, writer, reader):
  python = {"this": sys.executable, "other": OTHER}
  workdir = str(tmp_path / "run")
  _probe(python[writer], "train", workdir, str(tmp_path / "tfds"))
  wrote = _probe(python[writer], "load", workdir)
  read = _probe(python[reader], "load", workdir)
  assert wrote["versions"] != read["versions"], "both sides run the same versions"
  assert read["step"] == wrote["step"] == 30
  assert read["greedy"] == wrote["greedy"] and read["beam2"] == wrote["beam2"]
  assert len(read["logprobs"]) == len(wrote["logprobs"]) == 2
  for a, b in zip(read["logprobs"], wrote["logprobs"]):
    np.testing.assert_allclose(a, b, atol=1e-4)
