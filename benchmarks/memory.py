"""Compiled temporary memory of a train step with and without rematerialisation.

  python benchmarks/memory.py                        # 6+6 layers d512 (base), B8, S=T=512
  python benchmarks/memory.py --task=lm --layers=12 --seq=1024 --batch=4

XLA's `compiled.memory_analysis()` reports the temporary buffers (activations kept for the
backward pass, workspace) apart from arguments and outputs; remat trades them for recompute.
Also: the chunked loss (`config.loss_chunk`: no [B, T, V] logits kept), the unrolled layer
stack (`model.scan_unroll`), and compile times.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import common  # noqa: E402

from xformer import model as model_lib  # noqa: E402
from xformer import tasks  # noqa: E402
from xformer.data import pipeline  # noqa: E402
from xformer.model import config as model_config  # noqa: E402
from xformer.runtime import host_memory  # noqa: E402
from xformer.training import steps  # noqa: E402


def compiled_step(cfg, task: str, batch: int, seq: int, loss_chunk: int = 0):
  model = tasks.get(task).build_model(cfg)
  tx = optax.adam(1e-3)
  params = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
  state = steps.TrainState(jax.ShapeDtypeStruct((), jnp.int32), params,
                           jax.eval_shape(tx.init, params))
  layout = pipeline.row_lengths(tasks.get(task), pipeline.Lengths(seq, seq))
  shapes = {k: jax.ShapeDtypeStruct((batch, n), jnp.int32) for k, n in layout.items()}
  loss_fn = functools.partial(steps.loss_sums, task=tasks.get(task), model=model,
                              label_smoothing=0.1, chunk=loss_chunk)
  fn = jax.jit(functools.partial(steps.train_step, loss_fn=loss_fn, tx=tx,
                                 schedule=lambda s: 1e-3), donate_argnums=(0,))
  start = time.perf_counter()
  compiled = fn.lower(state, shapes, jax.random.key(0)).compile()
  return compiled, time.perf_counter() - start


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--task", default="translation", choices=["translation", "lm"])
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--d_ff", type=int, default=2048)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--vocab", type=int, default=8000)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--policies", default="none,dots_no_batch,dots,full")
  p.add_argument("--loss_chunk", type=int, default=128,
                 help="Also measure remat=none with the chunked loss (0: skip).")
  p.add_argument("--unrolled", type=int, default=1,
                 help="Also measure remat=none with the layer loop unrolled (0: skip).")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  rows = []
  runs = [(policy, 0, 1) for policy in args.policies.split(",")]
  if args.loss_chunk:
    runs.append(("none", args.loss_chunk, 1))
  if args.unrolled:
    runs.append(("none", 0, args.layers))
  for policy, chunk, unroll in runs:
    cfg = model_config.variant("base", vocab_size=args.vocab, d_model=args.d_model,
                           num_heads=args.heads, d_ff=args.d_ff, num_encoder_layers=args.layers,
                           num_decoder_layers=args.layers, max_len=args.seq, remat=policy,
                           scan_unroll=unroll)
    compiled, compile_s = compiled_step(cfg, args.task, args.batch, args.seq, chunk)
    mem = compiled.memory_analysis()
    rows.append({"remat": policy, "loss_chunk": chunk, "scan_unroll": unroll,
                 "temp_MiB": mem.temp_size_in_bytes / 2**20,
                 "args_MiB": mem.argument_size_in_bytes / 2**20,
                 "out_MiB": mem.output_size_in_bytes / 2**20, "compile_s": compile_s})
    print(rows[-1], flush=True)
  stacks = f"{args.layers}+{args.layers if args.task == 'translation' else 0}"
  base = rows[0]["temp_MiB"]
  for r in rows:
    r["temp_vs_none"] = r["temp_MiB"] / base
  common.print_table(rows, ["remat", "loss_chunk", "scan_unroll", "temp_MiB", "temp_vs_none",
                            "args_MiB", "out_MiB", "compile_s"],
                     f"Train-step memory, {args.task} {stacks} layers "
                     f"d{args.d_model} ff{args.d_ff}, B{args.batch} x {args.seq}")
  common.write_json(args.json, rows, args=vars(args))
  return rows


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # As xformer.main does: XLA:CPU speed.
  main()
