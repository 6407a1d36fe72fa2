"""Compiling a config for a TPU slice or GPU host without the hardware: the targets by their Cloud
names (catalog), the ahead-of-time compile of a run's steps (compiler), FLOPs counts (flops) and
the printed report (report). The command is `python -m xformer.compile`.
"""

# pylint: disable=unused-import
from xformer.targets.catalog import (  # noqa: F401
    CHIPS, GPU_TARGET_FILES, Chip, Target, abstract_devices, chip_of_device_kind, parse, torus_dims)
