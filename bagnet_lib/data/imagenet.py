"""An ImageNet validation folder, read the standard way: `<wnid>/*.JPEG`, Resize(256) + CenterCrop(224).

Introduced for the ImageNet study (notebook 06, docs/imagenet.md). Unlike the flowers, nothing is decoded
into memory first: torchvision's `ImageFolder` lists the files (classes = the synset folders in sorted
order, which is the class index of the published ImageNet weights), and a `DataLoader` with worker processes
decodes each batch while the network runs. Images are decoded by `images.load_rgb` (CMYK, grayscale and PNGs
named .JPEG, all of which occur in ImageNet, become RGB) and kept uint8 until the device normalises them.

`check_layout` refuses a folder that is not in this layout before any work, naming the folder and the fix
(the validation tarball unpacks flat; it must be sorted into synset folders first). A file that cannot be
decoded does not stop a run: its item comes back as `None`, `collate` leaves it out of the batch, and the
batch names it (`Batch.unreadable`) so the run can count and report it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torchvision import transforms
from torchvision.datasets import ImageFolder

from bagnet_lib.data.images import UnreadableImage, is_image_name, load_rgb
from bagnet_lib.errors import UserError

RESIZE, CROP = 256, 224  # the standard ImageNet evaluation: shorter side to 256, centre 224×224
WNID = re.compile(r"n\d{8}")  # a WordNet synset id, the name of each ImageNet class folder
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # DataLoader processes decoding JPEGs
VALPREP_URL = "https://github.com/soumith/imagenetloader.torch/blob/master/valprep.sh"


def _sorting_hint() -> str:
    return (f"sort the validation images into one folder per synset first, e.g. with {VALPREP_URL} "
            "(or torchvision.datasets.ImageNet(root, split='val'), which does it from the devkit)")


def check_layout(root: str | Path) -> list[str]:
    """The synset folders of an ImageNet-layout folder (sorted); a `UserError` naming `root` otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"The ImageNet validation folder {root} does not exist or is not a folder. Pass the folder "
                        "that holds the 1,000 synset folders (n01440764/ … n15075141/) with --val-dir or IMAGENET_VAL.")
    entries = [e for e in root.iterdir() if not e.name.startswith(".")]
    folders = sorted(e.name for e in entries if e.is_dir())
    loose = [e.name for e in entries if e.is_file() and is_image_name(e.name)]
    if not folders:
        what = (f"{len(loose)} images directly inside it (the flat layout the validation tarball unpacks to)"
                if loose else "no class folders")
        raise UserError(f"{root} is not an ImageNet-layout folder: it holds {what}. Expected <wnid>/*.JPEG with "
                        f"one folder per synset; {_sorting_hint()}.")
    odd = [name for name in folders if not WNID.fullmatch(name)]
    if odd:
        raise UserError(f"{root} is not an ImageNet-layout folder: {len(odd)} of its {len(folders)} folders are not "
                        f"named by a WordNet id like n01440764 (e.g. {', '.join(odd[:3])}). Pass the folder that "
                        "holds the synset folders themselves, not one above or below it.")
    if loose:
        raise UserError(f"{root} holds {len(loose)} images outside the synset folders (e.g. {loose[0]}); they have no "
                        f"class. Move them into their synset folders ({_sorting_hint()}) or out of {root}.")
    empty = [name for name in folders if not any(is_image_name(f.name) for f in (root / name).iterdir())]
    if empty:
        raise UserError(f"{root}: {len(empty)} synset folder{'s' * (len(empty) > 1)} hold no image (e.g. "
                        f"{empty[0]}); the class indices of the weights would shift. Restore the images or "
                        "evaluate on a folder whose classes all have images.")
    return folders


def eval_transform() -> transforms.Compose:
    """Resize(256) + CenterCrop(224) on the PIL image (bilinear, antialiased), then a uint8 tensor [3, 224, 224]."""
    return transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.PILToTensor()])


class ValFolder(ImageFolder):
    """`ImageFolder` over a checked ImageNet-layout folder; an item is (uint8 image or None, label, index, path)."""

    def __init__(self, root: str | Path) -> None:
        self.synsets = check_layout(root)
        super().__init__(str(root), transform=eval_transform(), loader=load_rgb, is_valid_file=is_image_name)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, int, str]:
        path, label = self.samples[index]
        try:
            image = self.transform(self.loader(path))
        except UnreadableImage:
            image = None
        return image, label, index, path


@dataclass
class Batch:
    """A decoded batch: uint8 images [B, 3, 224, 224], labels [B], their indices in the folder, and the
    paths of the batch's files that could not be decoded (left out of the batch)."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    unreadable: list[str] = field(default_factory=list)


def collate(items: Sequence[tuple[Tensor | None, int, int, str]]) -> Batch:
    """Stack the readable items of a batch; name the others."""
    good = [(x, y, i) for x, y, i, _ in items if x is not None]
    bad = [path for x, _, _, path in items if x is None]
    if not good:
        return Batch(torch.zeros(0, 3, CROP, CROP, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                     torch.zeros(0, dtype=torch.long), bad)
    return Batch(torch.stack([x for x, _, _ in good]), torch.tensor([y for _, y, _ in good]),
                 torch.tensor([i for _, _, i in good]), bad)


def spread_subset(n: int, size: int | None) -> list[int]:
    """`size` indices spread evenly over `n` (every class of a sorted folder gets its share); all when None."""
    if size is None or size >= n:
        return list(range(n))
    if size < 1:
        raise UserError(f"A subset of {size} images is empty; pass a positive number (or leave it out for all {n}).")
    return sorted({round(i * (n - 1) / max(size - 1, 1)) for i in range(size)})
