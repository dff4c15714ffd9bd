"""Audit an image-folder dataset before training: what is unusable, what is duplicated, what leaks.

Introduced in notebook 01. `audit_dataset(root)` looks at every file the loader could see
(`root/<class>/**` without following symlinked folders, plus the files directly under `root`) and
reports one `Problem` per file and kind:

- `not_image`      a file whose name is not an image (`flickr.py`, `.DS_Store`, a root `LICENSE.txt`),
                   or a symlinked folder, which the loader does not follow (one that loops back,
                   `daisy/loop -> ..`, is said to loop); the loader skips these, so this is a note.
- `outside_class`  an image directly under `root`, in no class folder; the loader skips it.
- `unreadable`     image-named but does not decode fully (empty, truncated, corrupt), or not a
                   regular file (a broken or looping symlink such as `x.jpg -> x.jpg`, a named pipe).
                   Excluded.
- `too_small`      a side under 33 px, the receptive field of BagNet-33. Excluded.
- `non_rgb`        decodes, but is stored as grayscale / CMYK / palette / alpha / 16-bit; `load_rgb`
                   converts it, so this is a note.
- `duplicate`      byte-identical (SHA-256) or perceptually identical to another file (see below).
- `label_conflict` a file whose duplicate group spans more than one class (it also has a `duplicate`
                   entry). Every file of such a group is excluded, since its label is ambiguous.

Perceptual identity: a 512-bit difference hash of the decoded image (grayscale, resized to 17x16
and 16x17, one bit per horizontally / vertically adjacent pair: 256 + 256 bits), and two files match
when the Hamming distance is at most `NEAR_DUPLICATE_MAX_DISTANCE`. Near-flat images (tiny
contrast) have hashes made of noise and are matched by bytes only. Groups are connected components
of "byte-identical or within the distance".

Calibration on the shared Kaggle flowers (4,242 images; every pair at distance <= 110 was looked at
side by side): the 10 byte-identical pairs are at 0; resized, re-encoded, recoloured and grey-scaled
copies of the same photo are at 1-47; heavier edits of the same photo and burst shots of one scene
are at 53-87; the first pair of *different* photos (a daisy and a dandelion, different classes) is at
87. The default 48 keeps a wide margin below that, finds the 10 byte-identical groups plus 21
near-duplicate pairs, and yields exactly the 8 label-conflict groups the dataset is known to have.
"""
from __future__ import annotations

import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
from PIL import Image

from bagnet_lib.data.folder import class_names, is_looping_link
from bagnet_lib.data.images import UnreadableImage, is_image_name, load_rgb
from bagnet_lib.errors import UserError
from bagnet_lib.io import sha256_file

if TYPE_CHECKING:  # pandas is imported lazily: the audit itself does not need it
    import pandas

__all__ = [
    "FLAT_STD",
    "HASH_BITS",
    "KINDS",
    "MIN_SIDE",
    "NEAR_DUPLICATE_MAX_DISTANCE",
    "AuditReport",
    "Problem",
    "audit_dataset",
    "perceptual_hash",
    "split_leakage",
]

MIN_SIDE = 33  # BagNet-33 receptive field: a smaller image cannot hold one patch
HASH_SIDE = 16
HASH_BITS = 2 * HASH_SIDE * HASH_SIDE  # 512
NEAR_DUPLICATE_MAX_DISTANCE = 48  # bits out of 512; calibrated on the shared flowers (module docstring)
FLAT_STD = 4.0  # grey-level std of the 16x16 thumbnail below which the hash is noise: bytes only

# Report order; also the order of `summary` in the JSON.
KINDS = ("not_image", "outside_class", "unreadable", "too_small", "non_rgb", "duplicate", "label_conflict")
_EXCLUDED_KINDS = ("unreadable", "too_small")

_MODE_NAMES = {
    "1": "1-bit black and white",
    "L": "8-bit grayscale",
    "LA": "grayscale with alpha",
    "La": "grayscale with alpha",
    "P": "palette",
    "PA": "palette with alpha",
    "RGBA": "RGB with alpha",
    "RGBa": "RGB with alpha",
    "RGBX": "RGB with padding",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
    "I": "32-bit integer",
    "I;16": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "I;16N": "16-bit grayscale",
    "F": "32-bit float",
}


@dataclass
class Problem:
    """One finding about one file. `path` is relative to the dataset root, with forward slashes."""

    path: str
    kind: str
    detail: str
    group: int | None = None  # index into `AuditReport.duplicate_groups` for duplicate / label_conflict

    def to_json(self) -> dict:
        out = {"path": self.path, "kind": self.kind, "detail": self.detail}
        if self.group is not None:
            out["group"] = self.group
        return out


@dataclass
class AuditReport:
    """What `audit_dataset` found. Paths are relative to `root`, with forward slashes."""

    root: str
    classes: list[str]
    class_counts: dict[str, int]  # readable image files per class (too-small and duplicates included)
    problems: list[Problem] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)  # each sorted; sorted by first path
    conflict_groups: list[list[str]] = field(default_factory=list)  # the groups spanning several classes

    @property
    def n_images(self) -> int:
        return sum(self.class_counts.values())

    def summary(self) -> dict[str, int]:
        """Number of problem entries per kind (every kind listed, zeros included)."""
        counts = {k: 0 for k in KINDS}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return counts

    def by_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def paths_of(self, kind: str) -> list[str]:
        return [p.path for p in self.problems if p.kind == kind]

    def duplicate_group_of(self) -> dict[str, int]:
        """path -> index of its duplicate group, for every file in a group (for group-aware splits)."""
        return {path: g for g, members in enumerate(self.duplicate_groups) for path in members}

    def excluded_paths(self, keep_conflicts: bool = False) -> set[str]:
        """Image files a training set should leave out: unreadable ones, ones with a side under 33 px,
        and every file of a label-conflict group (unless `keep_conflicts`). Notes (`not_image`,
        `non_rgb`, same-class `duplicate`) exclude nothing; keep duplicates within one split instead."""
        out = {p.path for p in self.problems if p.kind in _EXCLUDED_KINDS}
        if not keep_conflicts:
            for group in self.conflict_groups:
                out.update(group)
        return out

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "classes": list(self.classes),
            "class_counts": dict(self.class_counts),
            "n_images": self.n_images,
            "problems": [p.to_json() for p in self.problems],
            "duplicate_groups": [list(g) for g in self.duplicate_groups],
            "label_conflict_groups": [list(g) for g in self.conflict_groups],
            "summary": self.summary(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "AuditReport":
        """The inverse of `to_json` (e.g. for RUN_DIR/audit.json)."""
        return cls(root=data["root"], classes=list(data["classes"]), class_counts=dict(data["class_counts"]),
                   problems=[Problem(p["path"], p["kind"], p["detail"], p.get("group")) for p in data["problems"]],
                   duplicate_groups=[list(g) for g in data["duplicate_groups"]],
                   conflict_groups=[list(g) for g in data["label_conflict_groups"]])

    def format_text(self, max_per_kind: int = 20) -> str:
        """A terminal-friendly report: images per class, then the problems grouped by kind."""
        lines = [f"Dataset audit: {self.root}"]
        width = max([len("class"), len("total"), *(len(c) for c in self.classes)])
        lines.append(f"  {'class':<{width}}  {'images':>7}")
        for c in self.classes:
            lines.append(f"  {c:<{width}}  {self.class_counts.get(c, 0):>7,}")
        lines.append(f"  {'total':<{width}}  {self.n_images:>7,}")
        if not self.classes:
            lines.append("  (no class folders: expected root/<class>/<image>)")
        empty = [c for c in self.classes if not self.class_counts.get(c, 0)]
        if empty:
            lines.append(f"  (no readable images in {', '.join(empty)}: the split refuses the dataset until "
                         "you add images to, or remove, those class folders)")
        excluded = self.excluded_paths()
        summary = {k: n for k, n in self.summary().items() if n}
        if not summary:
            lines.append("No problems found.")
            return "\n".join(lines) + "\n"
        lines.append("")
        lines.append("Problems: " + ", ".join(f"{k} {n}" for k, n in summary.items())
                     + f"; {len(excluded)} image(s) excluded from training by default")
        notes = {
            "not_image": "not an image name (or a symlinked folder, not followed); the loader skips these",
            "outside_class": "images in no class folder; the loader skips these",
            "unreadable": "cannot be decoded; excluded",
            "too_small": f"a side under {MIN_SIDE} px; excluded",
            "non_rgb": "not stored as RGB; converted on load (note only)",
            "duplicate": f"{len(self.duplicate_groups)} group(s) of byte-identical or near-identical images",
            "label_conflict": f"{len(self.conflict_groups)} duplicate group(s) filed under several classes; "
                              "all their files excluded",
        }
        for kind in summary:
            entries = self.by_kind(kind)
            lines.append("")
            lines.append(f"{kind} ({len(entries)}): {notes.get(kind, '')}")
            for p in entries[:max_per_kind]:
                tag = f"[g{p.group}] " if p.group is not None else ""
                lines.append(f"  {p.path}  {tag}{p.detail}")
            if len(entries) > max_per_kind:
                lines.append(f"  ... and {len(entries) - max_per_kind} more (see the JSON report)")
        return "\n".join(lines) + "\n"


def perceptual_hash(image: Image.Image) -> tuple[np.ndarray, float]:
    """512-bit difference hash of `image` as a bool array, and the grey-level std of its thumbnail.

    Bits 0-255 compare horizontal neighbours of a 17x16 grayscale thumbnail, bits 256-511 vertical
    neighbours of a 16x17 one. A small std (< `FLAT_STD`) means the bits are mostly noise.
    """
    grey = image.convert("L")
    h = np.asarray(grey.resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BILINEAR), dtype=np.int16)
    v = np.asarray(grey.resize((HASH_SIDE, HASH_SIDE + 1), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = np.concatenate([(h[:, 1:] > h[:, :-1]).ravel(), (v[1:, :] > v[:-1, :]).ravel()])
    return bits, float(h[:, :HASH_SIDE].std())


@dataclass
class _Scan:
    """What one image file looked like (internal)."""

    path: str
    label: str | None
    sha256: str | None = None
    error: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None
    bits: np.ndarray | None = None
    flat: bool = False


def _inspect(root: Path, rel: str, label: str | None) -> _Scan:
    full = root / rel
    scan = _Scan(rel, label)
    if not full.is_file():  # never opened: a named pipe would block, a looping link cannot be read
        scan.error = _not_a_file(full)
        return scan
    try:
        scan.sha256 = sha256_file(full)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rgb = load_rgb(full)  # full decode, EXIF orientation applied
            with Image.open(full) as im:
                scan.mode = im.mode
    except UnreadableImage as exc:
        cause = exc.__cause__
        scan.error = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        if isinstance(cause, Image.DecompressionBombError):
            scan.error = f"refused by PIL's decompression-bomb guard ({cause})"
        elif full.stat().st_size == 0:
            scan.error = "empty file (0 bytes)"
        return scan
    except OSError as exc:  # permission denied, vanished mid-scan
        scan.error = f"{type(exc).__name__}: {exc}"
        return scan
    scan.size = rgb.size
    scan.bits, std = perceptual_hash(rgb)
    scan.flat = std < FLAT_STD
    return scan


def _not_a_file(full: Path) -> str:
    """Why an image-named path that is not a regular file cannot be used (for `unreadable`)."""
    if full.is_symlink():
        target = os.readlink(full)
        if is_looping_link(full):
            return (f"symbolic link loop ({full.name} -> {target}): it can never be opened; "
                    "delete the link or replace it by the image")
        if not full.exists():
            return f"broken symbolic link ({full.name} -> {target}: the target does not exist)"
    if full.is_dir():
        return "a folder with an image name"
    try:
        mode = os.stat(full).st_mode
        kind = ("named pipe (FIFO)" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
                else "device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
        return f"not a regular file but a {kind}; it is never opened"
    except OSError as exc:
        return f"not a regular file ({type(exc).__name__}: {exc})"


def _folder_link_detail(full: Path, cls: str | None) -> str:
    """The `not_image` detail for a symlinked folder (never followed)."""
    where = "at the dataset root" if cls is None else f"in class '{cls}'"
    if not full.is_symlink():
        return f"a folder ({where}) the loader does not read"
    target = os.readlink(full)
    if is_looping_link(full):
        return (f"symbolic link loop ({full.name} -> {target}, {where}): a link to a folder that contains "
                "it; not followed, the loader skips it")
    return (f"symbolic link to a folder ({full.name} -> {target}, {where}): not followed, so its images are "
            "not loaded; copy the folder in (or link each file) if they belong to this class")


def _walk(root: Path) -> tuple[list[str], list[tuple[str, str | None]], list[tuple[str, str | None, str | None]]]:
    """(classes, image-named files as (path, class), other entries as (path, class, detail or None));
    paths relative. Symlinked folders inside a class, and looping ones at the root, are `others`."""
    classes = class_names(root)
    images: list[tuple[str, str | None]] = []
    others: list[tuple[str, str | None, str | None]] = []
    with os.scandir(root) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.is_dir():  # class folders (or hidden folders, which the loader never reads)
                if entry.name in classes or entry.name.startswith("."):
                    continue
                others.append((entry.name, None, _folder_link_detail(root / entry.name, None)))
                continue
            if is_image_name(entry.name):
                images.append((entry.name, None))
            else:
                others.append((entry.name, None, None))
    for cls in classes:
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=False):
            base = Path(dirpath)
            for d in sorted(dirnames):
                if not d.startswith(".") and (base / d).is_symlink():
                    others.append(((base / d).relative_to(root).as_posix(), cls, _folder_link_detail(base / d, cls)))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (base / d).is_symlink())
            for name in sorted(filenames):
                rel = (base / name).relative_to(root).as_posix()
                if is_image_name(name):
                    images.append((rel, cls))
                else:
                    others.append((rel, cls, None))
    return classes, images, others


def _near_pairs(bits: np.ndarray, max_distance: int, block: int = 1024) -> Iterable[tuple[int, int, int]]:
    """(i, j, distance) for i < j with Hamming distance <= max_distance, computed in row blocks."""
    n = len(bits)
    if n < 2:
        return
    signed = bits.astype(np.float32) * 2.0 - 1.0  # +-1: dot = bits - 2 * hamming
    nbits = bits.shape[1]
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist = (nbits - signed[start:stop] @ signed.T) / 2.0
        ii, jj = np.nonzero(dist <= max_distance + 0.5)
        for i, j in zip(ii + start, jj):
            if i < j:
                yield int(i), int(j), int(round(float(dist[i - start, j])))


def audit_dataset(
    root: str | Path,
    progress: bool = True,
    *,
    near_threshold: int = NEAR_DUPLICATE_MAX_DISTANCE,
    workers: int | None = None,
) -> AuditReport:
    """Audit the image folder at `root` (see the module docstring for what is reported).

    `near_threshold`: largest Hamming distance (of 512 bits) counted as perceptually identical;
    a negative value turns perceptual matching off (bytes only). `workers`: decoding threads
    (default: up to 4, one per CPU).
    """
    from tqdm.auto import tqdm

    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"Cannot audit {root.resolve()}: it is not a folder. Pass the dataset root, the folder that "
            "holds one sub-folder per class (root/<class>/<image>.jpg), e.g. ../shared/data/flowers."
        )
    classes, image_files, other_files = _walk(root)
    problems: list[Problem] = []

    for rel, _cls, detail in other_files:
        if detail is None:
            name = rel.rsplit("/", 1)[-1]
            suffix = Path(name).suffix
            why = "hidden file" if name.startswith(".") else (
                f"extension '{suffix}' is not an image extension" if suffix else "no file extension")
            if (root / rel).is_symlink() and is_looping_link(root / rel):
                why += f", and a symbolic link loop (-> {os.readlink(root / rel)})"
            where = "at the dataset root, in no class" if _cls is None else f"in class '{_cls}'"
            detail = f"{why} ({where}); the loader skips it"
        problems.append(Problem(rel, "not_image", detail))

    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        scans = list(tqdm(pool.map(lambda pc: _inspect(root, pc[0], pc[1]), image_files),
                          total=len(image_files), desc="auditing", unit="img", disable=not progress))

    class_counts = {c: 0 for c in classes}
    readable: list[_Scan] = []
    for s in scans:
        if s.label is None:
            problems.append(Problem(s.path, "outside_class",
                                    "image directly under the dataset root, in no class folder; the loader skips it"))
        if s.error is not None:
            problems.append(Problem(s.path, "unreadable", s.error))
            continue
        assert s.size is not None and s.mode is not None
        if s.label is None:
            continue
        class_counts[s.label] += 1
        readable.append(s)
        w, h = s.size
        if min(w, h) < MIN_SIDE:
            problems.append(Problem(s.path, "too_small",
                                    f"{w}x{h} px: a side is under {MIN_SIDE} px, the BagNet-33 receptive field"))
        if s.mode != "RGB":
            problems.append(Problem(s.path, "non_rgb",
                                    f"stored as mode '{s.mode}' ({_MODE_NAMES.get(s.mode, 'not RGB')}); "
                                    "converted to RGB on load"))

    groups, pair_distance = _duplicate_groups(readable, near_threshold)
    duplicate_groups = [sorted(readable[i].path for i in g) for g in groups]
    order = sorted(range(len(groups)), key=lambda k: duplicate_groups[k])
    duplicate_groups = [duplicate_groups[k] for k in order]
    groups = [groups[k] for k in order]
    conflict_groups: list[list[str]] = []
    for g, members in enumerate(groups):
        labels = sorted({readable[i].label for i in members})
        conflict = len(labels) > 1
        if conflict:
            conflict_groups.append(duplicate_groups[g])
        for i in members:
            others = []
            for j in sorted(members, key=lambda k: readable[k].path):
                if j == i:
                    continue
                a, b = min(i, j), max(i, j)
                if readable[i].sha256 == readable[j].sha256:
                    how = "identical bytes"
                elif (a, b) in pair_distance:
                    how = f"near-identical, dHash distance {pair_distance[(a, b)]}/{HASH_BITS}"
                elif readable[i].bits is not None and readable[j].bits is not None and not (
                        readable[i].flat or readable[j].flat):
                    d = int(np.count_nonzero(readable[i].bits != readable[j].bits))
                    how = f"same group via another file, dHash distance {d}/{HASH_BITS}"
                else:
                    how = "same group via another file"
                others.append(f"{readable[j].path} ({how})")
            problems.append(Problem(readable[i].path, "duplicate", "duplicate of " + "; ".join(others), g))
            if conflict:
                problems.append(Problem(
                    readable[i].path, "label_conflict",
                    f"the same image is filed under {len(labels)} classes ({', '.join(labels)}): "
                    + ", ".join(duplicate_groups[g]), g))

    rank = {k: n for n, k in enumerate(KINDS)}
    problems.sort(key=lambda p: (rank.get(p.kind, len(KINDS)), p.path))
    return AuditReport(
        root=str(root),
        classes=classes,
        class_counts=class_counts,
        problems=problems,
        duplicate_groups=duplicate_groups,
        conflict_groups=conflict_groups,
    )


def _duplicate_groups(scans: list[_Scan], near_threshold: int) -> tuple[list[list[int]], dict[tuple[int, int], int]]:
    """Connected components (of size >= 2) of byte-identical or perceptually close files: each group's members in
    ascending order, the groups ordered by their smallest member."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(scans)
    edges: list[tuple[int, int]] = []
    first_with_hash: dict[str, int] = {}
    for i, s in enumerate(scans):
        assert s.sha256 is not None
        first = first_with_hash.setdefault(s.sha256, i)
        if first != i:
            edges.append((first, i))
    pair_distance: dict[tuple[int, int], int] = {}
    if near_threshold >= 0:
        idx = [i for i, s in enumerate(scans) if s.bits is not None and not s.flat]
        if len(idx) >= 2:
            bits = np.stack([scans[i].bits for i in idx])
            for a, b, d in _near_pairs(bits, near_threshold):
                i, j = idx[a], idx[b]
                pair_distance[(min(i, j), max(i, j))] = d
                edges.append((i, j))
    rows, cols = np.array(edges, dtype=np.int64).reshape(-1, 2).T
    _, labels = connected_components(coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(n, n)), directed=False)
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):  # ascending i: groups come out ordered by their smallest member
        members.setdefault(label, []).append(i)
    return [m for m in members.values() if len(m) > 1], pair_distance


def split_leakage(split: "pandas.DataFrame", report: AuditReport) -> "pandas.DataFrame":
    """Duplicate groups whose members fall into more than one split (train/val/test leakage).

    `split` has columns `path` (relative to the audited root) and `split`. Returns one row per
    leaking group with columns `group` (index into `report.duplicate_groups`), `paths`, `splits`
    and `classes` (sorted lists; only the group's files that appear in `split`).
    """
    import pandas as pd

    missing = [c for c in ("path", "split") if c not in split.columns]
    if missing:
        raise UserError(
            f"The split table lacks the column(s) {', '.join(missing)} (it has: {', '.join(map(str, split.columns))}). "
            "It needs one row per image with `path` (relative to the dataset root, e.g. daisy/123.jpg) "
            "and `split` (train/val/test); fix the CSV that was passed in."
        )
    split_of: dict[str, set[str]] = {}
    for path, name in zip(split["path"].astype(str), split["split"].astype(str)):
        norm = path.replace("\\", "/")
        while norm.startswith("./"):
            norm = norm[2:]
        split_of.setdefault(norm, set()).add(name)
    rows = []
    for g, members in enumerate(report.duplicate_groups):
        present = [p for p in members if p in split_of]
        splits = sorted(set().union(*(split_of[p] for p in present))) if present else []
        if len(splits) > 1:
            rows.append({
                "group": g,
                "paths": present,
                "splits": splits,
                "classes": sorted({p.split("/", 1)[0] for p in present}),
            })
    return pd.DataFrame(rows, columns=["group", "paths", "splits", "classes"])
