"""The reference run's networks, shipped with the repository: written once per publication, checked when loaded.

`publish` (course/runner.py) calls `ship_networks` for a published run: the networks the course evaluated
(`Run.checkpoint`: the adapted ones where the profile adapts), as plain fp32 state_dicts, into
`results/<profile>/networks/<name>.pt`, with the run's split (`split.csv`) and a manifest (`networks.json`: each
file's SHA-256 and size, and the training fingerprint: profile and its training settings, data, split, seed,
torch version). This module is the one writer of that folder. `load_shipped` reads a network back only after its
hash matches the manifest, with `torch.load(weights_only=True)`: a modified, truncated or swapped file is refused
in one paragraph that names it and says what to do, and nothing is computed from it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from bagnet_lib.errors import UserError
from bagnet_lib.io import atomic_write, sha256_file, write_json
from bagnet_lib.nets.weights import load_state_dict_file

MANIFEST = "networks.json"
SPLIT = "split.csv"


def networks_dir(results_dir: str | Path) -> Path:
    """Where a published profile's networks live: `results/<profile>/networks`."""
    return Path(results_dir) / "networks"


def data_fingerprint(data_dir: str | Path, paths: list[str]) -> str:
    """SHA-256 over the sorted relative paths and byte sizes of the split's images: the same files, or not."""
    h = hashlib.sha256()
    for rel in sorted(paths):
        f = Path(data_dir) / rel
        h.update(f"{rel}\t{f.stat().st_size if f.is_file() else -1}\n".encode())
    return h.hexdigest()


def ship_networks(checkpoints: dict[str, Path], split_csv: Path, dest: Path, fingerprint: dict) -> Path:
    """Write `dest` (results/<profile>/networks): each checkpoint's weights as an fp32 state_dict `<name>.pt`, the
    run's split, and the manifest with every file's SHA-256 and `fingerprint`. Replaces what was there."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, ckpt in checkpoints.items():
        state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in load_state_dict_file(ckpt).items()}
        path = atomic_write(dest / f"{name}.pt", lambda p, s=state: torch.save(s, p))
        files[name] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                       "checkpoint": Path(ckpt).name}
    shutil.copyfile(split_csv, dest / SPLIT)
    for old in dest.glob("*.pt"):  # a network the new publication does not ship is not kept
        if old.stem not in files:
            old.unlink()
    write_json(dest / MANIFEST, {**fingerprint, "networks": files, "split_file": SPLIT,
                                 "split_sha256": sha256_file(dest / SPLIT)})
    return dest


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a shipped-networks folder, or a one-paragraph error saying there is none and what to do."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"No shipped networks in {Path(folder)} ({MANIFEST} is missing). They are written when a "
                        "reference run is published (`make reproduce`, which trains them: about half an hour to an "
                        "hour on 2 cores); until then, train with `make reproduce` and explore that run directory.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); restore it with `git checkout -- {path}`.") from None


def _refuse(path: Path, what: str) -> UserError:
    return UserError(f"The shipped network {path} {what}, so nothing is computed from it. It was modified or "
                     f"truncated after publication: restore it with `git checkout -- {path}`, or train the networks "
                     "yourself with `make reproduce`.")


def verified_file(folder: str | Path, name: str) -> Path:
    """The path of shipped network `name` after its size and SHA-256 match the manifest (else a UserError)."""
    folder = Path(folder)
    entry = read_manifest(folder)["networks"].get(name)
    if entry is None:
        raise UserError(f"{folder / MANIFEST} ships no network named {name!r} (it has "
                        f"{', '.join(read_manifest(folder)['networks'])}).")
    path = folder / entry["file"]
    if not path.is_file():
        raise _refuse(path, "is missing")
    if path.stat().st_size != entry["bytes"]:
        raise _refuse(path, f"has {path.stat().st_size:,} bytes where the manifest says {entry['bytes']:,}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise _refuse(path, f"has SHA-256 {digest[:16]}… where the manifest says {entry['sha256'][:16]}…")
    return path


def load_shipped(folder: str | Path, name: str) -> dict[str, torch.Tensor]:
    """The state_dict of shipped network `name`, read with weights_only=True after its hash is checked."""
    return load_state_dict_file(verified_file(folder, name))
