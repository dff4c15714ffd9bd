"""Atomic file writes: a reader never sees a half-written checkpoint, CSV or JSON.

`atomic_write(path, …)` writes `.<name>.<random>.tmp` beside `path` and moves it onto `path` with
`os.replace`. A process killed in between leaves that temporary file behind (and `path` as it was);
`remove_stale_temporaries(path)` deletes such leftovers when a run resumes. They are never read.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from bagnet_lib.faults import fault_mid_write

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout (the package is installed editable)


def _new_file_mode(path: Path) -> int:
    """The permissions `path` keeps when rewritten: its own if it exists, else what `open` would give a new file
    (0o666 less the umask). `mkstemp`'s 0o600 would hide results from the rest of a team on a shared machine."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    return 0o666 & ~_UMASK


def _read_umask() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it: done once, at import, before any thread starts
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` with `os.replace` (atomic on POSIX), with the
    permissions a plain write would leave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _new_file_mode(path))
        fault_mid_write(Path(tmp), path)  # a test's named crash point; a no-op otherwise
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def temporary_pattern(path: str | Path) -> str:
    """The glob of `atomic_write`'s temporary files for `path` (`.<name>.*.tmp`)."""
    return f".{Path(path).name}.*.tmp"


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted `atomic_write` of `path` left beside it; return them.

    Call it only where no other process can be writing `path` at the same time (a resuming run owns
    its run directory). Each removal is reported on stdout.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(temporary_pattern(path))) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
        print(f"[resume] removed {tmp.name}: a half-written copy of {path.name} left by an interrupted run "
              "(never read)")
    return stale


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda p: p.write_text(text))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def display_path(path: str | Path) -> str:
    """A path as published: relative to the repository when inside it or inside the shared folder beside it
    (`../shared/…`), `$BAGNET_DATA` when it is that, else `<its name>` (nothing of this machine's layout)."""
    path = Path(path).resolve()
    env = os.environ.get("BAGNET_DATA")
    if env and Path(env).resolve() == path:
        return "$BAGNET_DATA"
    for base, prefix in ((PROJECT_ROOT, ""), (PROJECT_ROOT.parent / "shared", "../shared/")):
        try:
            return prefix + path.relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return f"<{path.name}>"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, streamed (`hashlib.file_digest`): the data audit, checkpoints, the dataset check."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
