"""Where a train step's time goes: XLA ops ranked by time, from a profiler trace of real steps.

  python benchmarks/profile_step.py                                  # configs/default.py
  python benchmarks/profile_step.py --config=configs/lm_default.py --set=batch_size=16 --top=40

Builds the run as train_throughput.py does, compiles, traces `--steps` steps with
`jax.profiler`, and sums each XLA op's *self* time (an op's time minus the ops nested in it, so
a `while` loop does not count its body twice). On CPU the ops are the XLA:CPU thunks on the
executor threads: with several threads, op time per step exceeds the step time. On GPU/TPU the
ops are those of the device planes' "XLA Ops" line (written from xprof's trace layout; so far
only run on CPU). Each op is shown with its HLO shape and kind from the compiled module, and ops
are also summed by category: gemm (dots and the YNNPACK/oneDNN fusions that wrap them), copy /
transpose, dynamic-(update-)slice (layer stacks under nn.scan), broadcast, other fusions.
The same steps are also timed untraced, after warm-up steps (the first steps after compile are
slow while the heap grows); here the two mostly agree within 5%, but the shared 2-core VM alone
moves step times by 20% or more, and its memory-bound ops (copies, broadcasts) varied up to 3x
between runs while GEMMs did not. Compare variants in back-to-back runs, and read shares and
ranking rather than absolute times.
The trace directory (`--trace_dir`) opens in TensorBoard / xprof as well.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import common  # noqa: E402

from xformer import config_lib, train  # noqa: E402
from xformer.runtime import host_memory  # noqa: E402

# Wrappers, not ops: their time is their children's (or waiting).
_NOT_OPS = ("ThunkExecutor", "SlinkyThreadPool", "end: ")


def op_lines(path: str) -> list[list[tuple[str, int, int]]]:
  """The XLA op events of an .xplane.pb trace: per timeline, [(name, start_ns, duration_ns)]."""
  from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel
  lines = []
  for plane in ProfileData.from_file(path).planes:
    if plane.name.startswith("/device:"):
      keep = lambda name: name == "XLA Ops"  # noqa: E731
    elif plane.name.startswith("/host:CPU"):
      keep = lambda name: name.startswith("tf_XLAEigen")  # noqa: E731
    else:
      continue
    lines += [[(e.name, e.start_ns, e.duration_ns) for e in line.events]
              for line in plane.lines if keep(line.name)]
  return lines


def self_times(lines) -> tuple[collections.Counter, collections.Counter]:
  """(self nanoseconds, calls) per op name: an event's duration minus that of the events nested
  in it on the same timeline. Wrapper events (_NOT_OPS) are dropped after the subtraction."""
  times, calls = collections.Counter(), collections.Counter()
  for events in lines:
    stack = []  # [name, end_ns] of the events enclosing the current one.
    for name, start, duration in sorted(events, key=lambda e: (e[1], -e[2])):
      while stack and stack[-1][1] <= start:
        stack.pop()
      if stack:
        times[stack[-1][0]] -= duration  # Nested: not the parent's own time.
      times[name] += duration
      calls[name] += 1
      stack.append([name, start + duration])
  for name in [n for n in times if n.startswith(_NOT_OPS)]:
    del times[name], calls[name]
  return times, calls


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Op name -> (result shape, opcode or fusion calls) of a compiled HLO module."""
  ops = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+(?: \S+)??) ([\w\-]+)\(", hlo_text,
                       re.M):
    ops.setdefault(m.group(1), (m.group(2), m.group(3)))
  return ops


def category(name: str, opcode: str) -> str:
  base = re.sub(r"\.\d+$", "", name)
  if base.startswith(("ynn", "onednn", "xnn", "cublas", "gemm", "dot")) or opcode in (
      "dot", "convolution") or "gemm" in base or "matmul" in base:
    return "gemm"
  if base.startswith(("copy", "transpose")) or opcode in ("copy", "transpose"):
    return "copy/transpose"
  if "dynamic-update-slice" in base or "dynamic-slice" in base:
    return "dynamic-(update-)slice"
  if base.startswith(("wrapped_broadcast", "broadcast")):
    return "broadcast"
  if base.startswith(("while", "conditional")):
    return "loop control"
  return "other fusions"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/default.py")
  p.add_argument("--set", action="append", default=[], help="Config override key=value.")
  p.add_argument("--steps", type=int, default=5, help="Steps timed, then traced.")
  p.add_argument("--warmup", type=int, default=3, help="Steps run first (compile, heap growth).")
  p.add_argument("--top", type=int, default=25, help="Ops listed.")
  p.add_argument("--trace_dir", default="", help="Keep the trace here (default: a temp dir).")
  args = p.parse_args(argv)
  config = config_lib.load_file(args.config, None, args.set)
  run, inputs = train.build(config)
  it, _ = inputs.train_iterator()
  batches = [run.put_batch(next(it), local=True) for _ in range(args.steps + args.warmup)]
  state, rng = run.init_state(jax.random.key(0)), jax.random.key(1)
  hlo = run.p_train_step.lower(state, batches[0], rng).compile().as_text()
  state, _ = common.run_steps(run.p_train_step, state, batches[:args.warmup], rng)
  # The same steps untraced, then traced.
  state, plain_s = common.run_steps(run.p_train_step, state, batches[args.warmup:], rng)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="xformer_trace_")
  jax.profiler.start_trace(trace_dir)
  state, traced_s = common.run_steps(run.p_train_step, state, batches[args.warmup:], rng)
  jax.profiler.stop_trace()
  trace = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
  times, calls = self_times(op_lines(trace))
  ops = hlo_ops(hlo)
  total = sum(times.values())
  per_step = lambda ns: ns / 1e6 / args.steps  # noqa: E731
  rows, by_cat = [], collections.Counter()
  for name, ns in times.most_common():
    shape, opcode = ops.get(name, ("?", "?"))
    by_cat[category(name, opcode)] += ns
    rows.append({"op": name, "ms_per_step": per_step(ns), "share": ns / total,
                 "calls_per_step": calls[name] / args.steps, "kind": opcode, "shape": shape})
  print(f"\n{os.path.basename(args.config)} {' '.join(args.set)}: step {1e3 * plain_s:.1f} ms "
        f"untraced, {1e3 * traced_s:.1f} ms traced ({args.steps} steps); op time "
        f"{per_step(total):.1f} ms per step; trace in {trace_dir}")
  common.print_table([{"category": c, "ms_per_step": per_step(ns), "share": ns / total}
                      for c, ns in by_cat.most_common()], ["category", "ms_per_step", "share"],
                     "Op time by category")
  common.print_table(rows[:args.top], ["op", "ms_per_step", "share", "calls_per_step", "kind",
                                       "shape"], f"Top {args.top} ops by self time")
  return rows, by_cat


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # As xformer.main does: XLA:CPU speed.
  main()
