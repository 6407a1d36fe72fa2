"""Training throughput: tokens/s (real and padded), step and compile time, MFU.

  python benchmarks/train_throughput.py                                  # default + lm_default
  python benchmarks/train_throughput.py --configs=configs/lm_default.py --encodings=rope,alibi \
      --set=model.dtype=bfloat16 --peak_tflops=989

Each (config, encoding) pair builds the real run (`xformer.run.Run`: data pipeline, sharded
jitted train step) and times `--steps` steps on real batches after a compile step and `--warmup`
more (on CPU the first steps after compiling run up to 2x slower while the heap grows). Real tokens
are target tokens (plus source tokens for translation) that are not padding; slots count
padding too. MFU = model FLOPs per step (xformer/targets/flops.py, computed on slots) / step time /
peak FLOP/s. Peak: --peak_tflops, else a known figure for the device, else measured here as the
best of a few large float32 matmuls ("achievable" peak, so CPU MFU is relative to that).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import common  # noqa: E402

from xformer import (  # noqa: E402
  config_lib,
  positional,  # noqa: E402
  targets,
  train,
)
from xformer.runtime import host_memory  # noqa: E402
from xformer.targets import flops as flops_lib  # noqa: E402


def peak_tflops(args) -> tuple[float, str]:
  if args.peak_tflops > 0:
    return args.peak_tflops, "given"
  kind = jax.devices()[0].device_kind
  chip = targets.chip_of_device_kind(kind)  # The one peak table (xformer/targets/catalog.py).
  if chip is not None:
    return chip.peak_tflops * len(jax.devices()), f"{kind} spec"
  return common.measured_peak_tflops(), "measured f32 matmul"


def bench_one(config_path: str, encoding: str, args, peak: float) -> dict:
  config = config_lib.load_file(config_path, f"posemb={encoding}", args.set)
  if positional.get(encoding).LIMITED_TO_MAX_LEN:
    config.model.max_len = max(config.model.max_len, config.data.max_source_len,
                               config.data.max_target_len)
  run, inputs = train.build(config)
  it, _ = inputs.train_iterator()
  batches = [next(it) for _ in range(args.steps + 1 + args.warmup)]
  state = run.init_state(jax.random.key(0))
  rng = jax.random.key(1)
  device_batches = [run.put_batch(b, local=True) for b in batches]
  state, compile_s = common.run_steps(run.p_train_step, state, device_batches[:1], rng)
  state, _ = common.run_steps(run.p_train_step, state, device_batches[1:1 + args.warmup], rng)
  timed = slice(1 + args.warmup, None)
  state, step_s = common.run_steps(run.p_train_step, state, device_batches[timed], rng)
  b0 = batches[0]
  rows, tgt_len = b0["targets"].shape
  src_len = b0["inputs"].shape[1] if "inputs" in b0 else 0
  real = np.mean([(b["targets_segment_ids"] > 0).sum() + (b["inputs_segment_ids"] > 0).sum()
                  if "inputs" in b else (b["targets_segment_ids"] > 0).sum()
                  for b in batches[timed]])
  slots = rows * (tgt_len + src_len)
  model_flops = flops_lib.train_step_flops(run.model_config, rows, src_len, tgt_len)
  return {"config": os.path.basename(config_path), "posemb": encoding, "batch": rows,
          "S": src_len, "T": tgt_len, "compile_s": compile_s, "step_ms": 1e3 * step_s,
          "real_tok_s": real / step_s, "slot_tok_s": slots / step_s,
          "real_frac": real / slots, "tflops": model_flops / step_s / 1e12,
          "mfu": model_flops / step_s / (peak * 1e12)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--configs", default="configs/default.py,configs/lm_default.py")
  p.add_argument("--encodings", default=",".join(positional.names()))
  p.add_argument("--steps", type=int, default=10, help="Timed steps after the warm-up.")
  p.add_argument("--warmup", type=int, default=3, help="Untimed steps after the compile step.")
  p.add_argument("--set", action="append", default=[], help="Config override key=value.")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="Peak of all devices (0: auto).")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  peak, source = peak_tflops(args)
  print(f"Peak {peak:.3g} TFLOP/s ({source}) on {common.device_description()}", flush=True)
  rows = []
  for config_path in args.configs.split(","):
    for enc in args.encodings.split(","):
      row = bench_one(config_path, enc, args, peak)
      rows.append(row)
      print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
  common.print_table(rows, ["config", "posemb", "batch", "S", "T", "compile_s", "step_ms",
                            "real_tok_s", "slot_tok_s", "real_frac", "tflops", "mfu"],
                     f"Train step throughput (peak {peak:.3g} TFLOP/s, {source})")
  common.write_json(args.json, rows, peak_tflops=peak, peak_source=source, args=vars(args))
  return rows


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # As xformer.main does: XLA:CPU speed.
  main()
