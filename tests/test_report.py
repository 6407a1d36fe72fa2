"""The compile tool's remedy text (xformer/targets/report.py), from report dicts: no compile."""

import os

from xformer import config_lib
from xformer.targets import report as report_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_remedy_names_the_projected_loss_when_the_logits_are_large():
  """The remedy's loss line: named with the whole logits' size when they are large (here 8 rows
  of 2048 per device at V = 32000: 1.95 GiB) and the loss is unchunked, not otherwise."""
  overrides = ["model.variant=lm_100m", "data.max_target_len=2048", "model.max_len=2048",
               "tokenizer.vocab_size=32000", "batch_size=32"]
  report = {"target": "v5p-8", "hbm_per_device_gib": 95.0, "devices": 4,
            "mesh": {"data": 4, "fsdp": 1, "tensor": 1}, "row_lengths": [2048],
            "attention": "splash (auto on TPU)", "tokens_per_step": 32 * 2048,
            "steps": {"train": {"peak_memory_per_device_gib": 99.0, "arguments_gib": 1.0,
                                "temporaries_gib": 98.0}}}
  for extra, named in (([], True), (["loss_chunk=256"], False), (["batch_size=8"], False)):
    config = config_lib.load_file(f"{REPO}/configs/lm1b.py", None, overrides + extra)
    report["tokens_per_step"] = config.batch_size * 2048
    remedy = report_lib.remedy(report, config)
    assert ("--config.loss_chunk=512 --config.fused_loss=True" in remedy) == named, remedy
    assert ("1.95 GiB per device" in remedy) == named, remedy

