"""Our train step vs PyTorch's `torch.nn.Transformer` (eager, CPU build) on the same machine.

  pip install -e ".[bench]"          # torch==2.13.0, a benchmark-only extra
  python benchmarks/peer_torch.py    # both sizes, 5 alternating repeats of 3 steps

Both sides: post-LN encoder-decoder, sinusoidal positions, one embedding table shared by source,
target and output, label-smoothed (0.1) cross-entropy, Adam(0.9, 0.98, 1e-9), float32, no
dropout (so both do exactly the same arithmetic), full-length rows without padding, the same
vocabulary. Ours runs its layers without a loop (scan_unroll = depth), as the CPU configs do.
Repeats alternate between the two (A B A B ...) so drifts in machine load hit both; the table
reports the median step time of each.

It also reports each side's model FLOP rate (benchmarks/flops.py, the same count for both) as a
fraction of the machine's achievable fp32 matmul peak (best of XLA's and torch's 2048^3 matmul):
a side at fraction f of the peak can be beaten by at most a factor 1 / f with the same arithmetic.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time

import jax
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import common  # noqa: E402

from xformer import model as model_lib  # noqa: E402
from xformer import tasks  # noqa: E402
from xformer.model import config as model_config  # noqa: E402
from xformer.runtime import host_memory  # noqa: E402
from xformer.targets import flops as flops_lib  # noqa: E402
from xformer.training import (
  optim,  # noqa: E402
  steps,  # noqa: E402
)

SIZES = {  # name: (d_model, heads, d_ff, layers each side, batch, length)
    "d256-3+3-B16": (256, 4, 1024, 3, 16, 64),
    "base-6+6-B8": (512, 8, 2048, 6, 8, 64),
}


def torch_peak_tflops(n: int = 2048) -> float:
  import torch  # pylint: disable=import-outside-toplevel
  x = torch.ones(n, n)
  return 2 * n**3 / common.time_call(lambda: x @ x, repeats=5)["min_s"] / 1e12


def config(d, heads, ff, layers, vocab):
  return model_config.variant("base", vocab_size=vocab, d_model=d, num_heads=heads, d_ff=ff,
                          num_encoder_layers=layers, num_decoder_layers=layers, dropout=0.0,
                          posemb="sinusoidal", scan_unroll=layers)


def ours(d, heads, ff, layers, vocab):
  model = model_lib.Transformer(config(d, heads, ff, layers, vocab))
  tx = optax.adam(optim.rsqrt_schedule(d, 4000), 0.9, 0.98, 1e-9)
  params = model_lib.init_params(model, jax.random.key(0))
  state = steps.TrainState(np.int32(0), params, tx.init(params))
  loss_fn = functools.partial(steps.loss_sums, task=tasks.get("translation"), model=model,
                              label_smoothing=0.1)
  step = jax.jit(functools.partial(steps.train_step, loss_fn=loss_fn, tx=tx,
                                   schedule=optim.rsqrt_schedule(d, 4000)), donate_argnums=(0,))
  return step, state


def torch_model(d, heads, ff, layers, vocab):
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  class Seq2Seq(nn.Module):
    """The same Transformer in torch: nn.Transformer plus a shared, tied, scaled embedding."""

    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab, d)
      nn.init.normal_(self.embed.weight, std=d**-0.5)
      self.core = nn.Transformer(d, heads, layers, layers, ff, dropout=0.0, batch_first=True)
      pos = torch.arange(512)[:, None]
      div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
      pe = torch.zeros(512, d)
      pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
      self.register_buffer("pe", pe)

    def forward(self, src, tgt_in):
      def emb(x):
        return self.embed(x) * math.sqrt(d) + self.pe[:x.shape[1]]
      mask = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
      x = self.core(emb(src), emb(tgt_in), tgt_mask=mask, tgt_is_causal=True)
      return x @ self.embed.weight.T  # [B, T, V]

  net = Seq2Seq()
  opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

  def step(src, tgt_in, tgt):
    opt.zero_grad(set_to_none=True)
    logits = net(src, tgt_in)
    loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1),
                                       label_smoothing=0.1)
    loss.backward()
    opt.step()
    return loss

  return step


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default=",".join(SIZES))
  p.add_argument("--vocab", type=int, default=8000)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--steps", type=int, default=3, help="Steps per repeat.")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  peak = max(common.measured_peak_tflops(), torch_peak_tflops())
  print(f"Achievable fp32 matmul peak {peak:.3g} TFLOP/s", flush=True)
  rows = []
  for name in args.sizes.split(","):
    d, heads, ff, layers, batch, length = SIZES[name]
    rng = np.random.default_rng(0)
    src = rng.integers(4, args.vocab, (batch, length)).astype(np.int32)
    tgt = rng.integers(4, args.vocab, (batch, length)).astype(np.int32)
    tgt_in = np.concatenate([np.full((batch, 1), 2, np.int32), tgt[:, :-1]], axis=1)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
    ones = np.ones((batch, length), np.int32)
    jbatch = {"inputs": src, "targets_in": tgt_in, "targets": tgt, "inputs_positions": positions,
              "targets_positions": positions, "inputs_segment_ids": ones,
              "targets_segment_ids": ones}
    jstep, state = ours(d, heads, ff, layers, args.vocab)
    key = jax.random.key(0)
    start = time.perf_counter()
    state, m = jstep(state, jbatch, key)
    common.block(m)
    compile_s = time.perf_counter() - start
    tstep = torch_model(d, heads, ff, layers, args.vocab)
    tb = [torch.from_numpy(x.astype(np.int64)) for x in (src, tgt_in, tgt)]
    tstep(*tb)  # Warm-up.
    times = {"ours": [], "torch": []}
    for _ in range(args.repeats):  # Alternating: A B A B ...
      start = time.perf_counter()
      for _ in range(args.steps):
        state, m = jstep(state, jbatch, key)
      common.block((state, m))
      times["ours"].append((time.perf_counter() - start) / args.steps)
      start = time.perf_counter()
      for _ in range(args.steps):
        tstep(*tb)
      times["torch"].append((time.perf_counter() - start) / args.steps)
    ours_s, torch_s = statistics.median(times["ours"]), statistics.median(times["torch"])
    tokens = 2 * batch * length
    tflop = flops_lib.train_step_flops(config(d, heads, ff, layers, args.vocab), batch, length,
                                       length) / 1e12
    torch_of_peak = tflop / torch_s / peak
    rows.append({"size": name, "ours_ms": 1e3 * ours_s, "torch_ms": 1e3 * torch_s,
                 "ours_tok_s": tokens / ours_s, "torch_tok_s": tokens / torch_s,
                 "speedup": torch_s / ours_s, "ours_compile_s": compile_s,
                 "ours_of_peak": tflop / ours_s / peak, "torch_of_peak": torch_of_peak,
                 "max_speedup": 1 / torch_of_peak,
                 "ours_all_ms": [round(1e3 * t, 1) for t in times["ours"]],
                 "torch_all_ms": [round(1e3 * t, 1) for t in times["torch"]]})
    print(rows[-1], flush=True)
  common.print_table(rows, ["size", "ours_ms", "torch_ms", "ours_tok_s", "torch_tok_s",
                            "speedup", "ours_of_peak", "torch_of_peak", "max_speedup",
                            "ours_compile_s"],
                     f"Train step vs torch.nn.Transformer {torch.__version__} (eager, "
                     f"{torch.get_num_threads()} threads), fp32, median of {args.repeats}; "
                     f"of_peak: model FLOP/s over the {peak:.3g} TFLOP/s matmul peak; "
                     f"max_speedup = 1 / torch_of_peak")
  common.write_json(args.json, rows, args=vars(args), torch=torch.__version__,
                    peak_tflops=peak)
  return rows


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # As xformer.main does: XLA:CPU speed.
  main()
