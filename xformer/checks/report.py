"""The self-check's result as one JSON-able dict and as the table printed on stdout."""

from __future__ import annotations

import socket
from typing import Any

import jax

from xformer.training.run import Run


def assemble(run: Run, config_path: str, timing: dict[str, Any],
             checks: list[dict[str, Any]]) -> dict[str, Any]:
  device = jax.devices()[0]
  return {
      "config": config_path, "host": socket.gethostname(), "process": jax.process_index(),
      "processes": jax.process_count(), "backend": jax.default_backend(),
      "device_kind": device.device_kind, "devices": jax.device_count(),
      "mesh": dict(run.mesh.shape), "attention": run.attention, "num_params": run.num_params,
      "dtype": run.model_config.dtype.name, "batch_size": run.config.batch_size,
      **timing, "checks": checks, "ok": all(c["ok"] is not False for c in checks)}


def _num(value: Any, fmt: str, scale: float = 1.0) -> str:
  return "n/a" if value is None else format(value * scale, fmt)


def table(result: dict[str, Any]) -> str:
  """What a person reads first: the machine, the step's figures, then each check."""
  why = result["why_none"]
  mem = result.get("compiled_memory_gib") or {}
  rows = [
      ("machine", f"{result['devices']} x {result['device_kind']} ({result['backend']}), "
                  f"{result['processes']} process(es), mesh {result['mesh']}"),
      ("model", f"{result['num_params']:,} parameters, {result['dtype']}, "
                f"attention {result['attention']}"),
      ("compile", f"{result['compile_s']:.1f} s"),
      ("step (median)", f"{result['step_s'] * 1e3:.2f} ms over {len(result['step_s_all'])} "
                        f"steps, {result['tokens_per_s']:,.0f} tokens/s"),
      ("MFU", _num(result["mfu"], ".1%") + (f" ({why['mfu']})" if "mfu" in why else "")),
      ("device memory", f"{result['measured_peak_gib']:.2f} GiB measured peak"
                        if result["measured_peak_gib"] is not None
                        else f"n/a ({why['measured_peak_gib']})"),
      ("compiled memory", f"{_num(mem.get('arguments'), '.3g')} GiB arguments + "
                          f"{_num(mem.get('temporaries'), '.3g')} GiB temporaries"),
      ("estimate", (f"{result['est_step_s'] * 1e3:.2f} ms (libtpu cost model); measured / "
                    f"estimated {result['measured_over_estimated']:.2f}")
                   if result["est_step_s"] else f"n/a ({why.get('est_step_s', '')})"),
  ]
  width = max(len(k) for k, _ in rows)
  lines = [f"{k:<{width}}  {v}" for k, v in rows]
  lines.append("")
  for check in result["checks"]:
    mark = {True: "PASS", False: "FAIL", None: "skip"}[check["ok"]]
    detail = (f"error {check['error']:.2e} <= {check['tolerance']:.0e}" if check["ok"] else
              f"error {check['error']:.2e} > {check['tolerance']:.0e}" if check["ok"] is False
              else check["why"])
    extra = f"; {check['compared']}" if check.get("compared") else ""
    lines.append(f"{mark}  {check['name']}: {detail}{extra}")
  lines.append("")
  lines.append("self-check passed" if result["ok"] else "self-check FAILED: see FAIL above")
  return "\n".join(lines)
