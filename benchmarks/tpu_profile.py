"""Where an estimated TPU step's time and memory go, from the compiled HLO (no hardware).

  python benchmarks/tpu_profile.py --config=configs/wmt_base.py --target=v5p-8
  python benchmarks/tpu_profile.py --config=configs/wmt_base.py --target=v5p-8 \
      --set=model.scan_unroll=1 --top=30

Compiles a config's train step for a TPU target the way `xformer.compile` does, then reads
libtpu's per-instruction `estimated_cycles` (the cost model's own figures, in each instruction's
backend config) and sums them by the module that made the instruction (its op_name: attention,
ffn, norms, the output projection and loss, the optimizer, ...) and by kind of fusion. Custom
calls (Pallas kernels) and collectives carry no per-instruction figure, and a loop body's
instructions appear once. With a layer loop, it also lists the loop-carried buffers: what the
backward pass keeps of every layer, stacked. Estimates, not measurements, and in the cost
model's cycles: they are not converted to seconds because the ratio of a program's
`optimal_seconds` to its summed cycles is no fixed clock (a 4096^3 and an 8192^3 bf16 matmul on
v5p differ by 25% in it), so shares are the figure to read.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from xformer.runtime import platforms  # noqa: E402

# First match wins: op_name fragments -> what they belong to.
GROUPS = (("attention", r"attention"), ("feed-forward", r"/ffn/"),
          ("layer norm", r"norm_|final_norm"), ("output projection + loss",
                                                 r"project|log_softmax|reduce_sum|jvp\(\)/"),
          ("embedding", r"embed|posemb"), ("dropout", r"Dropout"),
          ("optimizer", r"^jit\(train_step\)/[a-z_]+$"),
          ("layer loop (stacking per-layer values)", r"while/body/jit\(dynamic_"),
          ("compiler-made (layout copies, converts, broadcasts)", r"^$|^[a-z\-]+\.\d+$"),
          ("other", r""))
_ITEMSIZE = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}


def instructions(hlo_text: str):
  """(name, shape text, opcode, op_name, cycles) of every instruction with an estimate."""
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w-]*)\(", line)
    cycles = re.search(r'"estimated_cycles":"(\d+)"', line)
    if m and cycles:
      op_name = re.search(r'op_name="([^"]+)"', line)
      yield (m.group(1), m.group(2), m.group(3), op_name.group(1) if op_name else "",
             int(cycles.group(1)))


def group_of(op_name: str) -> str:
  return next(name for name, pattern in GROUPS if re.search(pattern, op_name))


def loop_buffers(hlo_text: str) -> list[tuple[str, float, list[tuple[float, str]]]]:
  """(while instruction, GiB, [(MiB, shape)] largest first) of each while loop's carried state."""
  out = []
  for line in hlo_text.splitlines():
    m = re.match(r"\s*%(while[.\d]*) = \((.*?)\) while\(", line)
    if not m:
      continue
    rows = []
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]\{", m.group(2)):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      rows.append((n * _ITEMSIZE.get(dtype, 4) / 2**20, f"{dtype}[{dims}]"))
    out.append((m.group(1), sum(r[0] for r in rows) / 1024, sorted(rows, reverse=True)))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--target", default="v5p-8")
  p.add_argument("--set", action="append", default=[], help="Config override key=value.")
  p.add_argument("--top", type=int, default=15, help="Largest single instructions to list.")
  p.add_argument("--unrolled", action="store_true",
                 help="Profile the step with its layer loop (and loss chunks) unrolled, as "
                 "xformer.compile does for its estimate: every layer counted, remat included.")
  args = p.parse_args(argv)
  platforms.compile_only_environment(args.target)
  from xformer import config_lib, targets  # pylint: disable=import-outside-toplevel
  from xformer.targets import compiler as compile_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load_file(args.config, None, args.set)
  target = targets.parse(args.target)
  run = compile_lib.build_run(config, target)
  if args.unrolled:
    run = compile_lib._unrolled(run)  # pylint: disable=protected-access
  fn, step_args = compile_lib.step_and_args(run, "train")
  lowered = fn.lower(*step_args)
  compiled = lowered.compile()
  text = compiled.as_text()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  rows = list(instructions(text))
  by_group, by_kind = collections.Counter(), collections.Counter()
  for name, _, opcode, op_name, cycles in rows:
    by_group[group_of(op_name)] += cycles
    by_kind[opcode if opcode != "fusion" else name.split(".")[0]] += cycles
  total = sum(by_group.values())
  kernels = compile_lib.kernel_calls(text, lowered.as_text())
  print(f"{args.config} on {args.target}: estimated step {1e3 * cost['optimal_seconds']:.2f} ms "
        f"(whole program); {total / 1e6:.1f} M cycles in instructions with an estimate; "
        f"not among them: {len(kernels)} kernel calls and the collectives")
  for title, counts in (("by module", by_group), ("by instruction kind", by_kind)):
    print(f"\n| {title} | M cycles | share |\n|---|---|---|")
    for key, cycles in counts.most_common(12):
      print(f"| {key} | {cycles / 1e6:.3f} | {cycles / total:.1%} |")
  print("\n| largest instructions | k cycles | shape | op |\n|---|---|---|---|")
  for name, shape, _, op_name, cycles in sorted(rows, key=lambda r: -r[4])[:args.top]:
    print(f"| {name} | {cycles / 1e3:.1f} | {shape[:60]} | {op_name[-70:]} |")
  for name, gib, buffers in loop_buffers(text):
    print(f"\n{name}: {gib:.2f} GiB carried; largest: " +
          ", ".join(f"{shape} {mib:.0f} MiB" for mib, shape in buffers[:6]))


if __name__ == "__main__":
  main()
