"""The compile tool's words: its report as a table, and what to change when a step does not fit.

Reads the report dict of `xformer.compile.compile_config` (its keys are the JSON the tool writes).
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections


def remedy(report: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """What to change when a step does not fit, and by how much it is over."""
  worst_name, worst = max(report["steps"].items(),
                          key=lambda kv: kv[1]["peak_memory_per_device_gib"])
  hbm, peak = report["hbm_per_device_gib"], worst["peak_memory_per_device_gib"]
  lines = [f"The {worst_name} step needs {peak:.2f} GiB per device on {report['target']}, "
           f"{peak - hbm:.2f} GiB ({peak / hbm - 1:.0%}) over its {hbm:g} GiB of HBM: "
           f"{worst['arguments_gib']:.2f} GiB of arguments (parameters, optimizer state, batch) "
           f"and {worst['temporaries_gib']:.2f} GiB of temporaries. Try:"]
  if worst["temporaries_gib"] > worst["arguments_gib"]:
    lines += _activation_remedies(report, config)
    lines.append(f"  --config.grad_accum_steps={2 * config.grad_accum_steps}: the same batch in "
                 "micro-batches, about half the activation memory")
    lines.append(f"  --config.batch_size={config.batch_size // 2}: half the rows per step")
  if report["mesh"]["fsdp"] == 1 and report["devices"] > 1:
    lines.append(f"  --config.mesh.fsdp={report['devices']} --config.mesh.data=1: shard "
                 "parameters and optimizer state over the devices instead of replicating them")
  return "\n".join(lines)


def _activation_remedies(report: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """Chunked XLA attention (no [T, T] probabilities kept per layer) and remat, where unset."""
  lines, model = [], config.model
  rows = report["row_lengths"]
  if report["attention"].split(" ")[0] == "xla" and not model.attention_chunk and max(rows) > 512:
    chunk = math.gcd(512, *rows)
    lines.append(f"  --config.model.attention_chunk={chunk}: XLA attention {chunk} queries at a "
                 "time with FlashAttention's backward pass: no [T, T] probabilities kept per "
                 "layer, and causal chunks skip the keys after their end")
  if model.remat == "none":
    loop = " --config.model.scan_unroll=1" if model.scan_unroll > 1 else ""
    lines.append(f"  --config.model.remat=ffn{loop} (or ffn_act, minimal, full): recompute "
                 "activations in the backward pass instead of keeping them (ffn: the "
                 "feed-forward's hidden layer only; remat needs the layer loop)")
  # The loss's float32 logits, whole: [rows per device, T, V].
  logits_gib = (report["tokens_per_step"] / (report["mesh"]["data"] * report["mesh"]["fsdp"])
                * config.tokenizer.vocab_size * 4 / 2**30)
  if not config.loss_chunk and logits_gib >= 0.5:
    chunk = math.gcd(512, config.data.max_target_len)
    lines.append(f"  --config.loss_chunk={chunk} --config.fused_loss=True: the output layer "
                 f"and the loss {chunk} positions at a time, the gradient computed in the "
                 f"forward pass (the whole [B, T, V] float32 logits are {logits_gib:.2f} GiB "
                 "per device)")
  return lines


def _tera(flops: float | None) -> str:
  return "n/a" if flops is None else f"{flops / 1e12:.3f}"


def format_report(report: dict[str, Any]) -> str:
  head = (f"{report['target']} ({report['topology']}, {report['devices']} devices, "
          f"{report['hbm_per_device_gib']:g} GiB each), mesh {report['mesh']}, "
          f"{report['num_params']:,} parameters, attention {report['attention']}")
  rows = ["| step | compile s | arguments GiB | temporaries GiB | peak GiB | fits | "
          "compiler TFLOP/device |", "|---|---|---|---|---|---|---|"]
  for name, s in report["steps"].items():
    rows.append(f"| {name} | {s['compile_s']:.1f} | {s['arguments_gib']:.2f} | "
                f"{s['temporaries_gib']:.2f} | {s['peak_memory_per_device_gib']:.2f} | "
                f"{'yes' if s['fits'] else 'NO'} | {_tera(s['flops'])} |")
  lines = [head, *rows, f"train step TFLOP, all devices: model {_tera(report['model_flops_per_step'])}"
           f", compiler {_tera(report['flops_per_step'])}"]
  if report["est_step_s"]:
    lower_bound = " (a lower bound: some kernels are unpriced)" if report[
        "unpriced_custom_calls"] else ""
    lines.append(f"estimated (libtpu cost model, {report['estimated_from']}): step "
                 f"{1e3 * report['est_step_s']:.2f} ms{lower_bound}, "
                 f"{report['est_tokens_per_s']:,.0f} tokens/s, MFU {report['est_mfu']:.2f}")
  elif report["target"].startswith(("h1", "h2", "a1")):
    lines.append("no time estimate: XLA's GPU cost analysis has no time model")
  if report["unpriced_custom_calls"]:
    lines.append(f"unpriced kernels: {', '.join(report['unpriced_custom_calls'])}")
  return "\n".join(lines)
