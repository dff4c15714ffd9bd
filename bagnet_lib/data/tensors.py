"""Decode once, augment tensors: the input pipeline.

Introduced in notebook 02. The paper's pipeline decoded every JPEG with PIL on every epoch. Here
each image is decoded once into a uint8 tensor whose shorter side is the profile's base size, kept
in memory and in an on-disk cache in the run directory (keyed by file content and base size, so an
edited file is decoded again). Augmentation works on those tensors (torchvision.transforms.v2
functional ops) with explicit random generators: an epoch's order comes from (seed, epoch) and each
image's crop and flip from (seed, epoch, image index), so an epoch is reproducible from (seed, epoch)
alone (resumed training is identical to uninterrupted training), and a global batch is the same images,
augmented the same way, whatever the number of processes that share it (`bagnet_lib.nets.distributed`).

Transforms as in the paper: train RandomResizedCrop(size) + horizontal flip; eval Resize(size) +
CenterCrop(size); ImageNet mean/std; always RGB with EXIF orientation applied.
"""
from __future__ import annotations

import atexit
import hashlib
import math
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from bagnet_lib.data.images import UnreadableImage, load_rgb
from bagnet_lib.errors import UserError
from bagnet_lib.io import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_size_for(image_size: int) -> int:
    """Shorter side of the decoded cache: image_size·256/224, as in Resize(256) → crop 224."""
    return int(math.ceil(image_size * 256 / 224))


@dataclass
class ImageTensors:
    """A decoded split: uint8 images [3, h, w] (shorter side = base size), labels and file paths."""

    images: list[Tensor]
    labels: Tensor
    paths: list[str]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.images)


def _content_key(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _decode(path: Path, base: int | None) -> Tensor:
    img = load_rgb(path)
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
    return TF.resize(t, [base], antialias=True) if base is not None and min(t.shape[-2:]) != base else t


def decode_images(root: str | Path, paths: Sequence[str], base: int | None, cache_file: str | Path | None = None,
                  progress: bool = True) -> list[Tensor]:
    """uint8 tensors for `paths` (relative to `root`), shorter side `base` (None: as decoded), from
    `cache_file` where the content matches.

    A file that cannot be decoded raises `UserError` naming it; the split step excludes unreadable
    files beforehand, so this only happens when a file changed after the split was written.
    """
    root = Path(root)
    cache: dict[str, Tensor] = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            cache = torch.load(cache_file, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache is only a cache: decode again
            cache = {}
    out: list[Tensor] = []
    fresh = 0
    for rel in tqdm(paths, desc=f"decode @{base}px", disable=not progress, leave=False):
        path = root / rel
        try:
            key = f"{_content_key(path)}@{base or 'original'}"
            if key not in cache:
                cache[key] = _decode(path, base)
                fresh += 1
        except (OSError, UnreadableImage) as exc:
            raise UserError(f"Image {path} could not be read ({exc}). It was listed in the split but is "
                            "missing or unreadable now; re-run `python -m bagnet_lib data split` "
                            "to rebuild the split without it.") from exc
        out.append(cache[key])
    if cache_file is not None and fresh:
        atomic_write(cache_file, lambda p: torch.save(cache, p))
    return out


def load_split_tensors(root: str | Path, split_df, split: str, classes: Sequence[str], image_size: int,
                       cache_dir: str | Path | None = None, progress: bool = True,
                       original_size: bool = False) -> ImageTensors:
    """Decode the rows of `split_df` (columns path, label, split) whose split is `split`.

    Images are kept with their shorter side at `base_size_for(image_size)`, or at their original size
    with `original_size` (the paper's crops came from the full images).
    """
    rows = split_df[split_df["split"] == split]
    if rows.empty:
        raise UserError(f"The split table has no '{split}' images; rebuild it with `data split`.")
    base = None if original_size else base_size_for(image_size)
    cache_file = (Path(cache_dir) / f"decoded_{base or 'original'}{'px' if base else ''}.pt"
                  if cache_dir is not None else None)
    images = decode_images(root, list(rows["path"]), base, cache_file, progress)
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[c] for c in rows["label"]], dtype=torch.long)
    return ImageTensors(images, labels, list(rows["path"]), list(classes))


def eval_transform(img: Tensor, size: int) -> Tensor:
    """Resize(size) + CenterCrop(size) on a uint8 tensor."""
    return TF.center_crop(TF.resize(img, [size], antialias=True), [size, size])


def random_resized_crop_params(h: int, w: int, gen: torch.Generator, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampling (10 tries, then a central crop), with our generator."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=gen).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def train_transform(img: Tensor, size: int, gen: torch.Generator, scale_min: float = 0.08,
                    scale_max: float = 1.0) -> Tensor:
    """RandomResizedCrop(size, scale=(scale_min, scale_max)) + RandomHorizontalFlip on a uint8 tensor, driven by
    `gen`."""
    top, left, ch, cw = random_resized_crop_params(img.shape[-2], img.shape[-1], gen, scale=(scale_min, scale_max))
    out = TF.resized_crop(img, top, left, ch, cw, [size, size], antialias=True)
    if torch.rand(1, generator=gen).item() < 0.5:
        out = TF.horizontal_flip(out)
    return out


def normalize(batch_uint8: Tensor) -> Tensor:
    """uint8 [N, 3, H, W] → float, ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch_uint8.device).view(1, 3, 1, 1)
    return (batch_uint8.float() / 255.0 - mean) / std


def eval_batch(data: ImageTensors, size: int) -> Tensor:
    """All images of `data` after the eval transform, stacked as uint8 [N, 3, size, size]."""
    return torch.stack([eval_transform(img, size) for img in data.images])


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True) -> list[list[int]]:
    """The global batches of one epoch as image indices: a permutation drawn from (seed, epoch), cut into
    `batch_size` slices (the last partial one dropped with `drop_last`). The same whatever the world size."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=gen).tolist()
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [order[start:start + batch_size] for start in range(0, stop, batch_size)]


def rank_share(batch: Sequence[int], rank: int = 0, world_size: int = 1) -> list[int]:
    """Rank `rank`'s contiguous part of a global batch: sizes differ by at most one, in rank order."""
    n = len(batch)
    return list(batch[n * rank // world_size:n * (rank + 1) // world_size])


def image_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random stream of one image's augmentation in one epoch, from (seed, epoch, index) alone
    (numpy's SeedSequence mixes the three into one 64-bit seed: nearby triples give unrelated streams)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def train_batches(data: ImageTensors, size: int, batch_size: int, seed: int, epoch: int,
                  drop_last: bool = True, scale_min: float = 0.08, scale_max: float = 1.0, rank: int = 0,
                  world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled, augmented uint8 batches for one epoch; identical for the same (seed, epoch).

    With `world_size` > 1 each batch is rank `rank`'s share (`rank_share`) of the global batch
    `epoch_order` gives: the ranks together see exactly the images, and the augmentations, of one process.
    """
    for batch in epoch_order(len(data), batch_size, seed, epoch, drop_last):
        idx = rank_share(batch, rank, world_size)
        yield (torch.stack([train_transform(data.images[i], size, image_generator(seed, epoch, i), scale_min,
                                             scale_max)
                            for i in idx]), data.labels[idx])


def eval_batches(images: Tensor, labels: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive slices of a pre-transformed uint8 stack."""
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size], labels[start:start + batch_size]


def prefetch(batches: Iterator, depth: int = 2) -> Iterator:
    """Yield the items of `batches`, produced `depth` ahead in a background thread while the caller computes.

    The thread runs torch with one intra-op thread (with the default, it and the training step would
    fight over the same cores and both slow down). The order is unchanged, so an epoch stays
    reproducible from (seed, epoch); an exception in the producer is re-raised here, and a consumer that
    stops early (an error, a KeyboardInterrupt) stops the producer too.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)  # wakes up to notice `stop`; never decides a result
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        torch.set_num_threads(1)
        try:
            for batch in batches:
                if not put(("batch", batch)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(("error", exc))

    worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    _LIVE_PRODUCERS.add((stop, worker))
    worker.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
        _LIVE_PRODUCERS.discard((stop, worker))


# A producer still inside torch when the interpreter exits aborts the process ("terminate called without an
# active exception"), e.g. after a `prefetch` generator was left unfinished: stop and join them all first.
_LIVE_PRODUCERS: set = set()


@atexit.register
def _stop_producers() -> None:
    for stop, worker in list(_LIVE_PRODUCERS):
        stop.set()
        worker.join()
