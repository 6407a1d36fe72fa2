"""Per-device memory of a compiled step from XLA's own buffer assignment (a dump), by kind.

  XLA_FLAGS=--xla_dump_to=/tmp/dump python -m xformer.compile --config=configs/lm1b.py \
      --target=v5p-8 --estimate=false ...
  python benchmarks/buffer_assignment.py /tmp/dump

`memory_analysis()`, which xformer.compile reports and judges `fits` by, reads higher than the
buffers XLA assigns for a step with a layer loop (benchmarks/README.md); this reads the latter:
the sizes of the allocations in each `*after_optimizations-buffer-assignment.txt`, summed as
parameters (arguments; donated ones are live-out too) and preallocated temporaries.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re

_ALLOCATION = re.compile(r"^allocation \d+: size (\d+)(.*)$")


def by_kind(path: pathlib.Path) -> dict[str, float]:
  """GiB per kind of allocation in one buffer-assignment file."""
  sizes = collections.Counter()
  for line in path.read_text().splitlines():
    m = _ALLOCATION.match(line)
    if m:
      rest = m.group(2)
      kind = ("parameters" if "parameter" in rest else
              "temporaries" if "preallocated-temp" in rest else "other")
      sizes[kind] += int(m.group(1))
  return {k: v / 2**30 for k, v in sorted(sizes.items())}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("dump", help="The --xla_dump_to directory.")
  p.add_argument("--module", default="train_step", help="Modules whose name contains this.")
  args = p.parse_args(argv)
  for path in sorted(pathlib.Path(args.dump).glob("*after_optimizations-buffer-assignment.txt")):
    if args.module in path.name:
      print(path.name, " ".join(f"{k} {v:.3f} GiB" for k, v in by_kind(path).items()))


if __name__ == "__main__":
  main()
