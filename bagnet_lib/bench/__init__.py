"""Benchmarks: `python -m bagnet_lib bench <name> [--json OUT] [--quick]`.

Each module (`sweep`, `sparse`, `train`, `evaluation`, `precision`, `ddp`, `imagenet`) has `run(quick: bool = False) -> dict` (the numbers, JSON-ready)
and `format_table(result: dict) -> str` (a readable table). Times are compared as ratios measured in
one run: this machine is shared and noisy, absolute times drift.
"""
BENCHMARKS = ("sweep", "sparse", "train", "evaluation", "precision", "ddp", "imagenet")
