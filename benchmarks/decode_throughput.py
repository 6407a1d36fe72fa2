"""Decoding speed: KV-cached vs full recompute, greedy and beam search, by output length.

  python benchmarks/decode_throughput.py                       # the default config's model
  python benchmarks/decode_throughput.py --lengths=32,128 --beams=1 --d_model=512 --layers=6

For each output length L the decoder runs exactly L steps (the EOS logit is pinned to 0 with
random weights, so no row stops early; the table checks the steps taken). Cached decoding
attends over a [L] cache per step, with the encoder output projected to cross-attention keys and
values once per sequence ("percross": projected again at every step, as before that change); full recompute (`decode.recompute_translate`) re-runs the
decoder over the whole [L] output buffer every step, as decoding without a cache does under
static shapes. Time per step covers the whole batch; tokens/s = batch * beam * steps / time.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=wrong-import-position

from xformer import model as model_lib  # noqa: E402
from xformer.data.tokenizer import EOS_ID  # noqa: E402
from xformer.model import config as model_config  # noqa: E402
from xformer.model import decode  # noqa: E402
from xformer.runtime import host_memory  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--lengths", default="32,128,256,512", help="Output lengths L.")
  p.add_argument("--beams", default="1,4", help="Beam sizes (1 = greedy).")
  p.add_argument("--batch", type=int, default=4, help="Source sentences per batch.")
  p.add_argument("--source_len", type=int, default=32)
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--d_ff", type=int, default=256)
  p.add_argument("--layers", type=int, default=3, help="Encoder and decoder layers each.")
  p.add_argument("--vocab", type=int, default=2000)
  p.add_argument("--posemb", default="sinusoidal")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--scan_unroll", type=int, default=3, help="As in configs/default.py.")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--max_recompute_steps", type=int, default=1024,
                 help="Skip recompute runs with more steps x beam than this (they are slow).")
  p.add_argument("--json", default="", help="Also write the rows here.")
  return p.parse_args(argv)


def build(args):
  cfg = model_config.variant("base", vocab_size=args.vocab, d_model=args.d_model,
                         num_heads=args.heads, d_ff=args.d_ff, num_encoder_layers=args.layers,
                         num_decoder_layers=args.layers, posemb=args.posemb, dropout=0.0,
                         max_len=max(int(x) for x in args.lengths.split(",")),
                         dtype=args.dtype, scan_unroll=args.scan_unroll)
  model = model_lib.Transformer(cfg)
  params = model_lib.init_params(model, jax.random.key(0))
  # Tied output: a zero EOS embedding gives EOS logit 0, below the top of 2,000 random logits.
  params["embed"]["embedding"] = params["embed"]["embedding"].at[EOS_ID].set(0.0)
  src = jax.random.randint(jax.random.key(1), (args.batch, args.source_len), 4, args.vocab)
  return model, params, src


def _cached(model, params, src, length: int, beam: int, cache_cross: bool):
  if beam == 1:
    return lambda: decode.greedy_translate(model, params, src, length, cache_cross)[0]
  return lambda: decode.beam_translate(model, params, src, length, beam, 0.6, cache_cross)


def main(argv=None):
  args = parse_args(argv)
  model, params, src = build(args)
  rows = []
  for beam in (int(b) for b in args.beams.split(",")):
    for length in (int(x) for x in args.lengths.split(",")):
      row = {"beam": beam, "L": length}
      fns = {name: _cached(model, params, src, length, beam, cache_cross)
             for name, cache_cross in (("cached", True), ("percross", False))}
      if length * beam <= args.max_recompute_steps:
        fns["recompute"] = lambda: decode.recompute_translate(model, params, src, length, beam)
      for mode, t in common.time_alternating(fns, repeats=args.repeats).items():
        out = fns[mode]()
        tokens = out if beam == 1 else out[0][:, 0]
        steps = int(jnp.max(jnp.sum(tokens != 0, axis=-1)))
        row[f"{mode}_steps"] = steps
        row[f"{mode}_ms_per_step"] = 1e3 * t["median_s"] / steps
        row[f"{mode}_tok_s"] = args.batch * beam * steps / t["median_s"]
        row[f"{mode}_compile_s"] = t["first_s"] - t["median_s"]
      row["cross_once_speedup"] = row["percross_ms_per_step"] / row["cached_ms_per_step"]
      if "recompute_ms_per_step" in row:
        row["speedup"] = row["recompute_ms_per_step"] / row["cached_ms_per_step"]
      rows.append(row)
      print(row, flush=True)
  for beam in sorted({r["beam"] for r in rows}):
    mine = [r for r in rows if r["beam"] == beam]
    base = mine[0]
    for r in mine:
      r["cached_step_growth"] = r["cached_ms_per_step"] / base["cached_ms_per_step"]
      r["length_growth"] = r["L"] / base["L"]
  cols = ["beam", "L", "cached_steps", "cached_ms_per_step", "cached_tok_s",
          "percross_ms_per_step", "cross_once_speedup", "recompute_ms_per_step",
          "recompute_tok_s", "speedup", "cached_step_growth", "length_growth"]
  common.print_table(rows, cols, f"Decoding, batch {args.batch}, d{args.d_model} "
                     f"{args.layers}+{args.layers} layers, vocab {args.vocab}, {args.posemb}, "
                     f"{args.dtype}")
  common.write_json(args.json, rows, args=vars(args))
  return rows


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # As xformer.main does: XLA:CPU speed.
  main()
