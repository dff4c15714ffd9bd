"""Train/val/test splits: seeded, class-stratified, duplicate groups kept in one split.

Introduced in notebook 01. A split is a table `path,label,split` (path relative to the dataset root)
written once per run (`RUN_DIR/split.csv`) and read by every later step, so all notebooks see the
same images. The paper's own split (first 70/20/10 % of each folder listing, no shuffling) is
available as a manifest, `../shared/data/flowers_paper_split.csv`.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bagnet_lib.data.audit import audit_dataset
from bagnet_lib.data.folder import Sample, class_names, list_images
from bagnet_lib.errors import UserError
from bagnet_lib.io import atomic_write

SPLITS = ("train", "val", "test")
FRACTIONS = (0.7, 0.2, 0.1)


def _groups(samples: Sequence[Sample], duplicate_groups: Iterable[Sequence[str]]) -> list[list[Sample]]:
    """Units that must stay together: each duplicate group, and every other file on its own."""
    by_path = {s.path: s for s in samples}
    seen: set[str] = set()
    units: list[list[Sample]] = []
    for group in duplicate_groups:
        members = [by_path[p] for p in group if p in by_path and p not in seen]
        if members:
            units.append(members)
            seen.update(m.path for m in members)
    units.extend([s] for s in samples if s.path not in seen)
    return units


def stratified_split(samples: Sequence[Sample], seed: int = 0, fractions: Sequence[float] = FRACTIONS,
                     duplicate_groups: Iterable[Sequence[str]] = ()) -> pd.DataFrame:
    """Assign every sample to train/val/test, class by class, keeping duplicate groups together.

    Within a class the units (files or duplicate groups) are shuffled with `seed` and each goes to
    the split furthest below its target count, so the proportions are met to within one group.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or len(fractions) != 3:
        raise ValueError(f"fractions must be three numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[list[Sample]]] = defaultdict(list)
    for unit in _groups(samples, duplicate_groups):
        by_class[unit[0].label].append(unit)
    rows = []
    for label in sorted(by_class):
        units = by_class[label]
        order = rng.permutation(len(units))
        total = sum(len(u) for u in units)
        targets = np.array(fractions) * total
        counts = np.zeros(3)
        for idx in order:
            unit = units[idx]
            k = int(np.argmax(targets - counts))  # the split furthest below its target
            counts[k] += len(unit)
            rows.extend((s.path, s.label, SPLITS[k]) for s in unit)
    return pd.DataFrame(rows, columns=["path", "label", "split"]).sort_values("path", ignore_index=True)


def check_splittable(samples: Sequence[Sample], min_per_class: int = 3, *, classes: Sequence[str] | None = None,
                     root: str | Path | None = None) -> None:
    """Refuse, before any training, datasets that cannot give every class a train/val/test image.

    `classes`: the class folders (`class_names(root)`); a folder with no usable sample is then refused
    too, instead of becoming a model output that no image ever trains. `root` only makes the
    messages name full folder paths.
    """
    counts: dict[str, int] = {c: 0 for c in classes or ()}
    for s in samples:
        counts[s.label] = counts.get(s.label, 0) + 1
    where = f" at {Path(root).resolve()}" if root is not None else ""

    def folder(c: str) -> str:
        return f"{(Path(root) / c).resolve()}" if root is not None else f"'{c}'"

    def listing(cs: Iterable[str]) -> str:
        return "; ".join(f"{folder(c)} ({counts[c]} usable image{'s' if counts[c] != 1 else ''})" for c in cs)

    if len(counts) < 2:
        only = f": {listing(counts)}" if counts else ""
        raise UserError(f"The dataset{where} has {len(counts)} class folder(s) with images{only} "
                        f"({dict(counts)}); classification needs at least two class folders with images. "
                        "Add a sub-folder of images for each other class (root/<class>/<image>.jpg), or point "
                        "--data-dir / BAGNET_DATA at the folder that holds the class folders.")
    small = sorted(c for c, n in counts.items() if n < min_per_class)
    if small:
        empty = [c for c in small if counts[c] == 0]
        what = ("no usable image (empty, or every image unreadable, under 33 px or filed under another class "
                "too; `python -m bagnet_lib data audit` lists them)" if empty == small else
                f"fewer than {min_per_class} usable images")
        left = len(counts) - len(small)
        also = ("" if left >= 2 else
                f" Removing them would leave {left} class(es), so add images instead.")
        raise UserError(f"Classes with fewer than {min_per_class} usable images cannot be split into "
                        f"train/val/test{where}: {listing(small)}. These class folders have {what}: add images "
                        f"(at least {min_per_class} per class) or remove those class folders.{also}")


def make_split(root: str | Path, seed: int = 0, audit=None, keep_conflicts: bool = False,
               fractions: Sequence[float] = FRACTIONS, progress: bool = False) -> pd.DataFrame:
    """The project's split of the dataset at `root`, excluding what the audit says is unusable.

    `audit` is an `AuditReport` (run when None): unreadable and too-small files are always left out,
    label-conflict groups unless `keep_conflicts`; duplicate groups stay within one split. Every class
    folder must keep enough usable images for a train, a val and a test image (else a `UserError`
    naming the folders, before any training), since each folder is a model output.
    """
    audit = audit if audit is not None else audit_dataset(root, progress=progress)
    excluded = audit.excluded_paths(keep_conflicts=keep_conflicts)
    samples = [s for s in list_images(root) if s.path not in excluded]
    check_splittable(samples, classes=class_names(root), root=root)
    split = stratified_split(samples, seed, fractions, audit.duplicate_groups)
    counts = split.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(columns=SPLITS, fill_value=0)
    empty = {label: [s for s in SPLITS if row[s] == 0] for label, row in counts.iterrows() if (row == 0).any()}
    if empty:
        raise UserError(
            f"Too few usable images to give every class a train, val and test image in {Path(root).resolve()}: "
            + "; ".join(f"{label}/ gets none in {', '.join(splits)} ({int(counts.loc[label].sum())} images)"
                        for label, splits in empty.items())
            + ". Add images to those class folders (a 70/20/10 split needs about 10 per class) or remove them.")
    return split


def read_manifest(root: str | Path, manifest: str | Path) -> pd.DataFrame:
    """A given `path,split` CSV (e.g. the paper's split), validated against the files at `root`."""
    manifest = Path(manifest)
    try:
        df = pd.read_csv(manifest, dtype=str)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read split manifest {manifest}: {exc}. It must be a CSV with columns "
                        "path,split.") from exc
    if not {"path", "split"} <= set(df.columns):
        raise UserError(f"Split manifest {manifest} has columns {list(df.columns)}; it needs path,split "
                        "(path relative to the dataset root, split one of train/val/test).")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise UserError(f"Split manifest {manifest} has unknown split names {bad}; use train, val, test.")
    missing = [p for p in df["path"] if not (Path(root) / p).is_file()]
    if missing:
        raise UserError(f"Split manifest {manifest} lists {len(missing)} files that are not under "
                        f"{Path(root).resolve()} (e.g. {missing[0]}). Point --data-dir/BAGNET_DATA at the "
                        "dataset the manifest was made for.")
    df["label"] = df["path"].map(lambda p: Path(p).parts[0])
    unused = [c for c in class_names(root) if c not in set(df["label"])]
    if unused:  # each class folder is a model output: one the manifest never trains must not exist
        folders = "; ".join(str((Path(root) / c).resolve()) for c in unused)
        raise UserError(f"Split manifest {manifest} lists no image of the class folder(s) {folders}, which would "
                        "become model outputs that no image trains. Remove those folders from the dataset (or "
                        "point --data-dir/BAGNET_DATA at the dataset the manifest was made for).")
    return df[["path", "label", "split"]].sort_values("path", ignore_index=True)


def subsample(split: pd.DataFrame, per_class: int, seed: int = 0) -> pd.DataFrame:
    """Keep about `per_class` images per class, in the split's proportions (≥ 1 per class and split)."""
    parts = []
    for (label, name), rows in split.groupby(["label", "split"], sort=True):
        frac = FRACTIONS[SPLITS.index(name)]
        n = max(1, int(round(per_class * frac)))
        parts.append(rows.sample(n=min(n, len(rows)), random_state=seed))
    return pd.concat(parts).sort_values("path", ignore_index=True)


def write_split(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the split table atomically."""
    return atomic_write(path, lambda p: df.to_csv(p, index=False))


def read_split(path: str | Path) -> pd.DataFrame:
    """Read a split table written by `write_split`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Split file {path} does not exist. Create it first with "
                        f"`python -m bagnet_lib data split --out {path}` (or run notebook 01).")
    df = pd.read_csv(path, dtype=str)
    if not {"path", "label", "split"} <= set(df.columns):
        raise UserError(f"Split file {path} needs the columns path,label,split; rebuild it with `data split`.")
    return df
