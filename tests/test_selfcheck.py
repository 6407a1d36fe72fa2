"""python -m xformer.selfcheck on this CPU host (1 and 8 devices): the table, a JSON with every
field (null with its reason where the CPU backend has none), and a failing check when the fused
attention path is wrong: a wrong logit scale injected into the splash kernel (interpret mode)."""

import json
import os
import subprocess
import sys

from conftest import coordinator_port
import pytest

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SMALL = ["--config=configs/default.py", "--config.data.max_source_len=128",
         "--config.data.max_target_len=128", "--config.batch_size=8",
         "--config.model.d_model=32", "--config.model.num_heads=2", "--config.model.d_ff=64",
         "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
         "--config.model.max_len=128", "--config.tokenizer.vocab_size=400", "--steps=2"]
FIELDS = {"config", "host", "process", "processes", "backend", "device_kind", "devices", "mesh",
          "attention", "num_params", "dtype", "batch_size", "compile_s", "step_s", "step_s_all",
          "losses", "tokens_per_step", "tokens_per_s", "model_flops_per_step",
          "peak_tflops_per_device", "mfu", "measured_peak_gib", "compiled_memory_gib",
          "est_step_s", "measured_over_estimated", "why_none", "checks", "ok"}
CHECKS = ["loss vs float32 on host CPU", "attention kernel vs XLA",
          "cached decode vs full forward", "all-reduce over every device"]
# The fault: the fused path scales the logits by 1.1 (the model passes 1.0: its scale is
# folded into the query projection).
WRONG_SCALE = ("import runpy, sys; from xformer.model import splash; right = splash.attention; "
               "splash.attention = lambda *a, scale=None, **k: right(*a, scale=1.1, **k); "
               "sys.argv = ['xformer.selfcheck'] + sys.argv[1:]; "
               "runpy.run_module('xformer.selfcheck', run_name='__main__')")


def _selfcheck(tmp_path, *flags, devices=1, code=None):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  head = ["-c", code] if code else ["-m", "xformer.selfcheck"]
  out = subprocess.run([sys.executable, *head, *SMALL, f"--json={tmp_path / 's.json'}", *flags],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                       check=False)
  result = json.loads((tmp_path / "s.json").read_text()) if (tmp_path / "s.json").exists() else {}
  return out, result


def test_one_device_table_and_every_json_field(tmp_path):
  out, result = _selfcheck(tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert FIELDS <= set(result), FIELDS - set(result)
  assert result["backend"] == "cpu" and result["devices"] == 1
  nulls = {k for k, v in result.items() if v is None}
  assert nulls == {"mfu", "peak_tflops_per_device", "measured_peak_gib", "est_step_s",
                   "measured_over_estimated"}, nulls
  for field in nulls:  # CPU has none: each says why.
    assert result[field] is None and result["why_none"][field], field
  assert result["step_s"] > 0 and len(result["step_s_all"]) == 2
  assert result["compiled_memory_gib"]["temporaries"] > 0
  assert [c["name"] for c in result["checks"]] == CHECKS
  by_name = {c["name"]: c for c in result["checks"]}
  assert by_name["attention kernel vs XLA"]["ok"] is None  # XLA attention on CPU: nothing to compare.
  assert all(by_name[n]["ok"] for n in CHECKS if n != "attention kernel vs XLA")
  assert "self-check passed" in out.stdout and "step (median)" in out.stdout


@pytest.mark.slow
def test_eight_devices_mesh_all_reduce_and_the_splash_kernel(tmp_path):
  out, result = _selfcheck(tmp_path, "--config.model.attention_impl=splash", devices=8)
  assert out.returncode == 0, out.stderr[-3000:]
  assert result["devices"] == 8 and result["mesh"]["data"] == 8
  reduce, kernel = result["checks"][3], result["checks"][1]
  assert reduce["ok"] and "36 vs 36" in reduce["compared"]  # 1 + 2 + ... + 8.
  assert kernel["ok"] and kernel["error"] < 1e-5, kernel


@pytest.mark.slow
def test_a_wrong_scale_in_the_fused_path_fails_the_check(tmp_path):
  out, result = _selfcheck(tmp_path, "--config.model.attention_impl=splash", code=WRONG_SCALE)
  assert out.returncode == 1, out.stderr[-3000:]
  assert "FAIL  attention kernel vs XLA" in out.stdout and "self-check FAILED" in out.stdout
  kernel = result["checks"][1]
  assert kernel["ok"] is False and kernel["error"] > 10 * kernel["tolerance"], kernel
  assert result["ok"] is False


@pytest.mark.slow
def test_the_launchers_stage_on_two_hosts_copies_each_hosts_json(tmp_path):
  """experiments/tpu_host.selfcheck_command as the launcher's `selfcheck` stage runs it on each
  host: two jax processes (one CPU device each), the all-reduce spanning both, each host's
  JSON copied by (a fake) gcloud to <workdir_root>/selfcheck/<host>.json."""
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import tpu_host  # pylint: disable=import-outside-toplevel
  from test_launch import FAKE_GCLOUD, _host_env  # pylint: disable=import-outside-toplevel
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("gcloud", FAKE_GCLOUD), ("hostname", "#!/bin/sh\necho host$JAX_PROCESS_ID\n")):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  command = tpu_host.selfcheck_command(SMALL[:-1], "gs://bkt/root/selfcheck", repo_dir=REPO,
                                       steps=2, python=sys.executable)
  with coordinator_port() as port:
    hosts = [subprocess.Popen(["bash", "-c", command], env=_host_env(tmp_path, port, i),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [h.communicate(timeout=600)[0] for h in hosts]
  assert [h.returncode for h in hosts] == [0, 0], "\n".join(o[-3000:] for o in outs)
  for i in range(2):
    result = json.loads((tmp_path / "gcs" / "root" / "selfcheck" / f"host{i}.json").read_text())
    assert result["processes"] == 2 and result["process"] == i and result["devices"] == 2
    assert "3 vs 3" in result["checks"][3]["compared"] and result["ok"]
