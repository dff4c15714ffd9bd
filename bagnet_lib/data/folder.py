"""Where the dataset is, and what is in it: an ImageFolder layout `root/<class>/<image>`.

Introduced in notebook 01. Resolution order: explicit argument > `$BAGNET_DATA` > `data/flowers` in
the project folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bagnet_lib.data.images import is_image_name
from bagnet_lib.errors import UserError
from bagnet_lib.io import PROJECT_ROOT

DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "flowers"  # not cwd-relative: notebooks run from notebooks/
FLOWER_CLASSES = ("daisy", "dandelion", "rose", "sunflower", "tulip")


def candidate_data_dirs(data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """The places a dataset is looked for, in order, each with where it came from."""
    out: list[tuple[str, Path]] = []
    if data_dir:
        out.append(("argument", Path(data_dir)))
    if os.environ.get("BAGNET_DATA"):
        out.append(("$BAGNET_DATA", Path(os.environ["BAGNET_DATA"])))
    out.append(("default", DEFAULT_DATA_DIR))
    return out


def find_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The first candidate that exists and holds class folders, or None."""
    for source, path in candidate_data_dirs(data_dir):
        if path.is_dir() and class_names(path):
            return path
        if source == "argument":  # an explicit argument that is wrong must not silently fall through
            return None
    return None


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Like `find_data_dir`, but a missing dataset is a `UserError` naming every path tried."""
    found = find_data_dir(data_dir)
    if found is not None:
        return found
    tried = "; ".join(f"{p.resolve()} ({src}{', missing' if not p.exists() else ', no class folders'})"
                      for src, p in candidate_data_dirs(data_dir))
    raise UserError(
        f"No image dataset found. Tried: {tried}. A dataset is a folder with one sub-folder per class "
        "(root/<class>/<image>.jpg). To get one: run `python -m bagnet_lib data download` (needs internet; "
        "TensorFlow's flower_photos), or point BAGNET_DATA at a copy of the Kaggle flowers "
        "(e.g. BAGNET_DATA=../shared/data/flowers), or make the embedded synthetic dataset with "
        "`python -m bagnet_lib data synthetic --out data/synthetic` and pass --data-dir data/synthetic."
    )


def is_looping_link(path: str | Path) -> bool:
    """True for a symbolic link that cannot be followed without going round in circles: a link to
    itself or to another looping link (`x.jpg -> x.jpg`), or a link to a folder that contains it
    (`daisy/loop -> ..`, `root/self -> .`)."""
    path = Path(path)
    if not path.is_symlink():
        return False
    try:
        os.stat(path)
    except OSError as exc:
        import errno

        return exc.errno == errno.ELOOP
    target = os.path.realpath(path)
    parent = os.path.realpath(path.parent)
    return parent == target or parent.startswith(target.rstrip(os.sep) + os.sep)


def class_names(root: str | Path) -> list[str]:
    """Sorted names of the visible sub-folders of `root` (the classes).

    A symlinked folder counts (a class may live elsewhere), except one that loops back to `root` or
    above it (`root/self -> .`): it would list the whole dataset again as one more class."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and not is_looping_link(p))


@dataclass(frozen=True)
class Sample:
    """One image file: its path relative to the dataset root and its class."""

    path: str  # relative, with forward slashes, e.g. "daisy/1234.jpg"
    label: str


def list_images(root: str | Path) -> list[Sample]:
    """Every image-named file under each class folder (nested folders included), sorted by path.

    Non-image files (`flickr.py`, `.DS_Store`, a root `LICENSE.txt`) are skipped here; the audit
    reports them. Symlinked directories inside a class are not followed, so a symlink loop cannot
    hang the scan; links to files are followed, and broken or looping ones (not regular files) are
    skipped, as are named pipes and other special files, which could block a reader forever.
    """
    root = Path(root)
    samples: list[Sample] = []
    for cls in class_names(root):
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if is_image_name(full) and full.is_file():
                    samples.append(Sample(full.relative_to(root).as_posix(), cls))
    return sorted(samples, key=lambda s: s.path)
