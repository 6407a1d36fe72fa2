"""Train step time with the written-out loss / output-projection gradients on and off.

  python benchmarks/loss_paths.py                      # default + lm_default, 6 rounds
  python benchmarks/loss_paths.py --configs=configs/lm_default.py --rounds=10

`fused_loss` (losses.fused_cross_entropy) and `model.fused_output` (layers.tied_logits with its
backward written out) are the fast path; off, the step is plain autodiff of losses.cross_entropy
and the tied product. Both variants are built and compiled first, then timed alternately
(`--steps` steps each per round, `--rounds` rounds) on the same batches, so drift on a noisy
machine hits both; the table reports the median over rounds of the per-step time.
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

from xformer import config_lib, train  # noqa: E402
from xformer.runtime import host_memory  # noqa: E402

VARIANTS = {"fused": ["fused_loss=True", "model.fused_output=True"],
            "autodiff": ["fused_loss=False", "model.fused_output=False"]}


def _build(config_path: str, overrides: list[str], steps: int):
  run, inputs = train.build(config_lib.load_file(config_path, None, overrides))
  it, _ = inputs.train_iterator()
  batches = [run.put_batch(next(it), local=True) for _ in range(steps)]
  state = run.init_state(jax.random.key(0))
  state, compile_s = common.run_steps(run.p_train_step, state, batches[:1], jax.random.key(1))
  return {"run": run, "state": state, "batches": batches, "compile_s": compile_s}


def bench_config(config_path: str, args) -> list[dict]:
  built = {name: _build(config_path, over + args.set, args.steps) for name, over in
           VARIANTS.items()}
  times = {name: [] for name in VARIANTS}
  for _ in range(args.rounds):
    for name, b in built.items():
      b["state"], step_s = common.run_steps(b["run"].p_train_step, b["state"], b["batches"],
                                            jax.random.key(1))
      times[name].append(step_s)
  base = float(np.median(times["autodiff"]))
  return [{"config": os.path.basename(config_path), "variant": name,
           "compile_s": built[name]["compile_s"], "step_ms": 1e3 * float(np.median(t)),
           "min_ms": 1e3 * float(np.min(t)), "vs_autodiff": float(np.median(t)) / base}
          for name, t in times.items()]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--configs", default="configs/default.py,configs/lm_default.py")
  p.add_argument("--steps", type=int, default=5, help="Steps per variant per round.")
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--set", action="append", default=[], help="Config override key=value.")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  print(f"On {common.device_description()}", flush=True)
  rows = [row for path in args.configs.split(",") for row in bench_config(path, args)]
  common.print_table(rows, ["config", "variant", "compile_s", "step_ms", "min_ms",
                            "vs_autodiff"], "Train step: written-out gradients vs autodiff "
                     f"(median of {args.rounds} alternating rounds)")
  common.write_json(args.json, rows, args=vars(args))
  return rows


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # As xformer.main does: XLA:CPU speed.
  main()
