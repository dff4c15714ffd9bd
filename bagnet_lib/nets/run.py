"""A run directory, opened: its profile, data, split, decoded images and trained checkpoints.

Every notebook works on one `Run` (`bagnet_lib.course.pipeline.prepare_run` opens it). A run directory holds
everything one run made:

    RUN_DIR/run.json            profile, data location, seed, whether the data is synthetic
    RUN_DIR/audit.json          the data audit
    RUN_DIR/split.csv           path,label,split: read by every later step
    RUN_DIR/checkpoints/        <model>_last.pt (resumable), <model>_best.pt, <model>_adapted.pt (nets.adapt)
    RUN_DIR/cache/              decoded images, cached patch logits
    RUN_DIR/results/            histories, metrics, blackout_<experiment>.csv, frontier.csv, summary.json
    RUN_DIR/REPORT.md           the write-up (notebook 05)

It lives with the networks because a run is what they were trained in: the blackout study, the figures and
the write-up all read it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from bagnet_lib.data.audit import AuditReport
from bagnet_lib.data.tensors import ImageTensors, load_split_tensors
from bagnet_lib.errors import UserError
from bagnet_lib.nets.models import BAGNETS, build_model
from bagnet_lib.nets.profiles import Profile
from bagnet_lib.nets.train import load_best, select_device, use_channels_last


@dataclass
class Run:
    """An opened run directory with its profile, data location and split."""

    run_dir: Path
    profile: Profile
    data_dir: Path
    synthetic: bool
    seed: int
    split: pd.DataFrame
    classes: list[str]
    _decoded: dict[str, ImageTensors] = field(default_factory=dict, repr=False)

    @property
    def results(self) -> Path:
        return self.run_dir / "results"

    @property
    def figures(self) -> Path:
        return self.run_dir / "figures"

    def audit(self):
        """The data audit of this run (RUN_DIR/audit.json) as an `AuditReport`."""
        return AuditReport.from_json(json.loads((self.run_dir / "audit.json").read_text()))

    def tensors(self, split: str, progress: bool = True) -> ImageTensors:
        """Decoded images of one split (train/val/test), cached in RUN_DIR/cache and kept for this Run."""
        if split not in self._decoded:  # figure helpers ask for the test split several times per notebook
            self._decoded[split] = load_split_tensors(self.data_dir, self.split, split, self.classes,
                                                      self.profile.image_size, self.run_dir / "cache", progress,
                                                      self.profile.original_size)
        return self._decoded[split]

    def trained(self, prefix: str = "") -> list[str]:
        """The models of this run with trained weights (e.g. `trained("bagnet")`), sorted by name: a best checkpoint,
        or only the adapted one where the run holds the networks shipped with the repository (`course.reference`)."""
        found = {p.name.rsplit("_", 1)[0] for kind in ("best", "adapted")
                 for p in (self.run_dir / "checkpoints").glob(f"{prefix}*_{kind}.pt")}
        return sorted(found)

    def bagnet(self, requested: str | None = None) -> str:
        """The BagNet this run studies: `requested`, else the one BagNet notebook 03 trained here.

        Introduced in notebook 04, so that notebook 03's `BAGNET` (bagnet9, bagnet17, bagnet33) flows through 04
        and 05 without being repeated.
        """
        if requested:
            if requested not in BAGNETS:
                raise UserError(f"BAGNET={requested!r} is not a BagNet; choose one of {', '.join(BAGNETS)}.")
            return requested
        trained = self.trained("bagnet")
        if len(trained) == 1:
            return trained[0]
        if not trained:
            raise UserError(f"No trained BagNet in {self.run_dir}: run notebook 03 first (or `python -m bagnet_lib "
                            f"train --model bagnet33 --run-dir {self.run_dir}`).")
        raise UserError(f"{self.run_dir} holds several trained BagNets ({', '.join(trained)}); set BAGNET in the "
                        "notebook's parameters cell to the one to study.")

    def checkpoint(self, name: str) -> Path:
        """The weights of `name` that the course evaluates: `<name>_adapted.pt` where the profile adapts that
        network to the test size (`nets.adapt`), else `<name>_best.pt` (the best validation epoch)."""
        p = self.profile.for_model(name)
        return self.run_dir / "checkpoints" / f"{name}_{'adapted' if p.adapt_bn or p.adapt_epochs else 'best'}.pt"

    def model(self, name: str, best: bool = True) -> torch.nn.Module:
        """The model `name` with its trained weights from this run (`checkpoint`) loaded, in eval mode, in the memory
        layout it trained in (`nets.train.use_channels_last`): in bf16 the two layouts run other kernels, so every
        number of the course (the training's test metrics, the logit cache, pixel blackout) comes from one layout."""
        model = build_model(name, len(self.classes), width=self.profile.width)
        ckpt = self.checkpoint(name)
        if best:
            if not ckpt.is_file():
                raise UserError(f"No trained {name} in {self.run_dir} ({ckpt} is missing). Train it first: "
                                f"`python -m bagnet_lib train --model {name} --run-dir {self.run_dir}` (notebook "
                                f"{'03' if name in BAGNETS else '02'}), which also adapts it to the test size where "
                                "the profile asks for it.")
            load_best(model, ckpt)
        device = select_device()
        model = model.to(device).eval()
        if use_channels_last(model, device, self.profile.for_model(name).channels_last):
            model = model.to(memory_format=torch.channels_last)  # the layout it trained and was scored in
        return model
