"""Estimated step time, tokens/s, MFU and memory on Cloud TPU and GPU targets (no hardware).

  python benchmarks/accelerators.py                      # the table of benchmarks/README.md
  python benchmarks/accelerators.py --cases=wmt_base --targets=v5p-8 --json=/tmp/acc.json

Every row is `xformer.compile` on a config for a target: TPU time from libtpu's cost model (an
estimate, never a measurement; a lower bound when a kernel is unpriced), GPU memory and FLOPs
only. Cases: the paper's base model at the paper batch (wmt_base, ~25K + 25K tokens) and a
~100M-parameter LM (d768, 12 layers, ff 3072, vocab 32K, T=2048, bf16), each with XLA attention
and with "auto" (splash on TPU), and remat policies.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from xformer.runtime import platforms  # noqa: E402

platforms.compile_only_environment("v5p-8")

import common  # noqa: E402  pylint: disable=wrong-import-position

from xformer import config_lib  # noqa: E402  pylint: disable=wrong-import-position
from xformer.targets import compiler as compile_lib  # noqa: E402  pylint: disable=wrong-import-position

LM_100M = ["model.variant=lm_100m", "data.max_target_len=2048", "model.max_len=2048",
           "tokenizer.vocab_size=32000", "batch_size=32", "eval_batch_size=32",
           "decode.beam_size=1"]
CASES = {
    "wmt_base": ("configs/wmt_base.py", []),
    "lm_100m": ("configs/lm1b.py", LM_100M),
}
VARIANTS = {
    "xla": ["model.attention_impl=xla"],
    "auto": ["model.attention_impl=auto"],
    "cudnn": ["model.attention_impl=cudnn", "data.pack=False"],  # GPU fused attention.
    # Remat needs the layer loop (wmt_base ships its stacks unrolled).
    "scan": ["model.attention_impl=auto", "model.scan_unroll=1"],
    "scan+remat_dots": ["model.attention_impl=auto", "model.scan_unroll=1",
                        "model.remat=dots_no_batch"],
    # XLA attention with FlashAttention's backward pass, causal chunks (xformer/model/flash_xla.py).
    "xla_chunked": ["model.attention_impl=xla", "model.attention_chunk=512"],
    "xla_chunked+ffn": ["model.attention_impl=xla", "model.attention_chunk=512",
                        "model.scan_unroll=1", "model.remat=ffn"],
    "auto+ffn": ["model.attention_impl=auto", "model.scan_unroll=1", "model.remat=ffn"],
    # The least memory at little time (benchmarks/README.md): the loss projected 256 positions
    # at a time with its gradient in the forward pass, and the cheapest remat that does it.
    "xla_lean": ["model.attention_impl=xla", "model.attention_chunk=256", "model.scan_unroll=1",
                 "model.remat=ffn", "fused_loss=True", "loss_chunk=256"],
    "auto_lean": ["model.attention_impl=auto", "model.scan_unroll=1", "model.remat=ffn_act",
                  "fused_loss=True", "loss_chunk=256", "model.fused_qkv=False"],
}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cases", default="wmt_base,lm_100m")
  p.add_argument("--targets", default="v5p-8,v5litepod-8,h100x8")
  p.add_argument("--variants", default="xla,auto")
  p.add_argument("--set", action="append", default=[], help="Config override key=value.")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  rows = []
  for case in args.cases.split(","):
    path, overrides = CASES[case]
    for target in args.targets.split(","):
      for variant in args.variants.split(","):
        config = config_lib.load_file(os.path.join(os.path.dirname(HERE), path), None,
                                      overrides + VARIANTS[variant] + args.set)
        r = compile_lib.compile_config(config, target, steps=("train",))
        train = r["steps"]["train"]
        row = {"case": case, "target": target, "variant": variant,
               "attention": r["attention"].split(" ")[0], "compile_s": train["compile_s"],
               "args_gib": train["arguments_gib"], "temp_gib": train["temporaries_gib"],
               "fits": r["fits"], "model_tflop": r["model_flops_per_step"] / 1e12,
               "compiler_tflop": (r["flops_per_step"] or 0) / 1e12,
               "est_ms": 1e3 * r["est_step_s"] if r["est_step_s"] else None,
               "est_tok_s": r["est_tokens_per_s"], "est_mfu": r["est_mfu"],
               "lower_bound": bool(r["unpriced_custom_calls"])}
        rows.append(row)
        print(row, flush=True)
  common.print_table(rows, list(rows[0]), "Estimated train step on accelerator targets "
                     "(libtpu cost model; GPU: memory and FLOPs only)")
  common.write_json(args.json, rows, args=vars(args))


if __name__ == "__main__":
  main()
