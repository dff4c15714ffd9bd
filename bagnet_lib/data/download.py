"""Download TensorFlow's public `flower_photos.tgz` and lay it out like the Kaggle flowers.

Introduced in notebook 01. The archive (3,670 JPEGs in `flower_photos/<plural class>/*.jpg` plus
`flower_photos/LICENSE.txt`) is streamed to a temporary file next to `dest`, checked against its
SHA-256 *before* anything is extracted, extracted safely (`tarfile`'s "data" filter, run over every
member before anything is written: no absolute paths, no `..`, no links or devices) into a temporary
folder next to `dest` with the Kaggle class names (`roses` -> `rose`, ...), and only then renamed
onto `dest`. An interrupted or failed run therefore never leaves half a dataset at `dest`, and nothing
the user already had is deleted.

Offline machines get a `UserError` at once, naming the alternatives (a Kaggle copy via
`$BAGNET_DATA`, or the embedded synthetic dataset).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from bagnet_lib.data.folder import FLOWER_CLASSES, class_names
from bagnet_lib.data.images import is_image_name
from bagnet_lib.errors import UserError
from bagnet_lib.io import sha256_file

__all__ = [
    "ARCHIVE_CLASS_NAMES",
    "FLOWER_PHOTOS_BYTES",
    "FLOWER_PHOTOS_SHA256",
    "FLOWER_PHOTOS_URL",
    "CS229_COMMIT",
    "CS229_URL",
    "CS229_TREE_SHA256",
    "download_cs229",
    "download_flowers",
    "has_dataset",
    "tree_digest",
]

FLOWER_PHOTOS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
# The real checksum, not a placeholder. Source: TensorFlow Datasets' own checksum record,
# tensorflow/datasets `tensorflow_datasets/url_checksums/tf_flowers.txt` (commit 333639b3...), line
# "http://download.tensorflow.org/example_images/flower_photos.tgz 228813984 4c54ace7...595d9c".
# Several unrelated public projects (Yocto/meta-tensorflow recipe, Coral retrain scripts, dataset
# loaders) pin the same value, so it is the archive at this URL, which has not changed since 2016.
FLOWER_PHOTOS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWER_PHOTOS_BYTES = 228_813_984  # same source; used for the progress bar when no Content-Length

# Archive folder name -> Kaggle class name (the names the rest of the project uses).
ARCHIVE_CLASS_NAMES = {
    "daisy": "daisy",
    "dandelion": "dandelion",
    "roses": "rose",
    "sunflowers": "sunflower",
    "tulips": "tulip",
}
assert sorted(ARCHIVE_CLASS_NAMES.values()) == sorted(FLOWER_CLASSES)

_CHUNK = 1 << 20

_ALTERNATIVES = (
    "Alternatives that need no download from here: download the Kaggle 'Flowers Recognition' dataset "
    "(alxmamaev/flowers-recognition) on a machine with internet, copy it over and set BAGNET_DATA to its "
    "folder that holds daisy/, dandelion/, rose/, sunflower/ and tulip/ (e.g. BAGNET_DATA=../shared/data/flowers); "
    "or make the embedded synthetic dataset with `python -m bagnet_lib data synthetic --out data/synthetic` "
    "and pass --data-dir data/synthetic."
)


def has_dataset(path: str | Path) -> bool:
    """True if `path` holds at least one class folder with at least one image file in it."""
    path = Path(path)
    for cls in class_names(path):
        for _dirpath, dirnames, filenames in os.walk(path / cls, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if any(is_image_name(name) for name in filenames):
                return True
    return False


def download_flowers(
    dest: str | Path = "data/flowers",
    url: str = FLOWER_PHOTOS_URL,
    sha256: str | None = FLOWER_PHOTOS_SHA256,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Download, verify and extract `flower_photos.tgz` into `dest/<class>/<image>.jpg`; return `dest`.

    Idempotent: if `dest` already holds class folders with images, nothing is downloaded. `dest` must
    otherwise be absent or an empty folder (anything else is a `UserError`; nothing is deleted).
    `url` may be `http(s)://` or `file://`. `sha256=None` skips the checksum (not recommended).
    `timeout` (seconds) bounds the connection and every read, so an offline machine fails fast.
    """
    dest = Path(dest)
    if has_dataset(dest):
        return dest
    requested = dest
    if dest.is_symlink():  # a link to an (empty) folder elsewhere: install there, keep the link
        dest = Path(os.path.realpath(dest))
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(
            f"Cannot download the flowers dataset into {dest.resolve()}: it already exists and is not an "
            "empty folder, but holds no class folders with images. Nothing was changed. Pass another "
            "destination, or move that folder's contents away and run the download again."
        )
    with _staging(dest) as (archive, extract_dir):
        with open(archive, "wb") as out:
            actual = _fetch(url, out, timeout=timeout, progress=progress)
        if sha256 is not None and actual != sha256.strip().lower():
            archive.unlink(missing_ok=True)
            raise UserError(
                f"The file downloaded from {url} does not have the expected SHA-256 checksum "
                f"(expected {sha256.strip().lower()}, got {actual}), so it was deleted and nothing was "
                f"extracted into {dest}. The download was probably corrupted or intercepted (a proxy or "
                "captive portal page): run the download again. " + _ALTERNATIVES
            )
        n = _extract(archive, extract_dir, url=url, progress=progress)
        if n == 0:
            raise UserError(
                f"The archive from {url} holds no images under flower_photos/<class>/ for the classes "
                f"{', '.join(sorted(ARCHIVE_CLASS_NAMES))}, so nothing was installed at {dest}. Check the URL; "
                + _ALTERNATIVES
            )
        _publish(extract_dir, dest)
    return requested


@contextlib.contextmanager
def _staging(dest: Path):
    """A temporary archive file and an empty extraction folder beside `dest`; both gone afterwards (the folder
    survives only as `dest`, when `_publish` moved it there), whatever happens in between."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tgz.part", dir=dest.parent)
    os.close(fd)
    archive = Path(tmp_name)
    extract_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        yield archive, extract_dir
    finally:
        archive.unlink(missing_ok=True)
        if extract_dir.exists():
            shutil.rmtree(extract_dir, ignore_errors=True)


def _fetch(url: str, out, *, timeout: float, progress: bool) -> str:
    """Stream `url` into the open binary file `out`; return the SHA-256 hex digest of what was read."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http/https/file only)
            length = resp.headers.get("Content-Length") if resp.headers else None
            total = int(length) if length and length.isdigit() else None
            if total is None and url == FLOWER_PHOTOS_URL:
                total = FLOWER_PHOTOS_BYTES
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc="flower_photos.tgz", disable=not progress) as bar:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise UserError(_download_failed(url, f"the server answered HTTP {exc.code} {exc.reason}")) from exc
    except urllib.error.URLError as exc:
        raise UserError(_download_failed(url, _reason(exc.reason))) from exc
    except (TimeoutError, OSError, ValueError) as exc:  # socket timeouts, resets, bad URL schemes
        raise UserError(_download_failed(url, _reason(exc))) from exc
    return digest.hexdigest()


def _reason(exc: object) -> str:
    import socket

    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        return "the connection timed out (no answer; this machine is probably offline)"
    if isinstance(exc, ConnectionRefusedError):
        return f"the connection was refused ({exc})"
    if isinstance(exc, socket.gaierror):
        return f"the host name could not be resolved ({exc}; no internet or no DNS on this machine)"
    return str(exc) or type(exc).__name__


def _download_failed(url: str, why: str) -> str:
    return f"Downloading the flowers dataset from {url} failed: {why}. Nothing was installed. " + _ALTERNATIVES


def _refusal(member: tarfile.TarInfo, into: Path) -> str | None:
    """Why `member` may not be extracted into `into`, or None. `tarfile`'s "data" filter refuses absolute paths,
    paths that leave `into`, links that point out of it, and devices; stricter still, a leading '/' (which the
    filter would only strip) and links of any kind are refused, as a flowers archive holds neither."""
    try:
        if tarfile.data_filter(member, str(into)).name != member.name:
            return f"{member.name!r} has an absolute path"
    except tarfile.FilterError as exc:
        return str(exc)
    if member.issym() or member.islnk():
        return f"{member.name!r} is a link"
    return None


def _target_name(member: tarfile.TarInfo) -> str | None:
    """`flower_photos/roses/x.jpg` -> `rose/x.jpg`; None for anything that is not a class image."""
    if not member.isfile():
        return None
    parts = [p for p in PurePosixPath(member.name).parts if p not in ("", ".")]
    if len(parts) >= 3 and parts[0] == "flower_photos":  # tolerate archives without the top folder too
        parts = parts[1:]
    if len(parts) != 2 or parts[0] not in ARCHIVE_CLASS_NAMES or not is_image_name(parts[1]):
        return None
    return f"{ARCHIVE_CLASS_NAMES[parts[0]]}/{parts[1]}"


def _extract(archive: Path, into: Path, *, url: str, progress: bool) -> int:
    """Extract the class images of `archive` into `into/<class>/`; return how many were extracted."""
    from tqdm.auto import tqdm

    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:  # refuse the whole archive if any member is unsafe, before writing anything
                why = _refusal(m, into)
                if why is not None:
                    raise UserError(
                        f"The archive downloaded from {url} contains an unsafe member: {why}; "
                        "refusing to extract anything from it. Nothing was installed. Check that the URL "
                        "points at TensorFlow's flower_photos.tgz. " + _ALTERNATIVES
                    )
            selected = [m.replace(name=target, mode=0o644) for m in members
                        if (target := _target_name(m)) is not None]
            for cls in sorted({s.name.split("/")[0] for s in selected}):
                (into / cls).mkdir()
            for m in tqdm(selected, desc="extracting", unit="img", disable=not progress):
                tar.extract(m, into, filter="data")
            return len(selected)
    except UserError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(
            f"The archive downloaded from {url} could not be extracted ({exc}); nothing was installed. "
            "Run the download again. " + _ALTERNATIVES
        ) from exc


def _publish(extract_dir: Path, dest: Path) -> None:
    """Move the finished extraction onto `dest` (absent or an empty folder) with one rename."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(extract_dir, 0o777 & ~umask)
    if dest.is_dir() and not dest.is_symlink():
        dest.rmdir()  # only ever empty here (checked before downloading); fails loudly otherwise
    os.rename(extract_dir, dest)


# --------------------------------------------------------------------------- the paper's own data and split
# The paper's repository ships its exact data and split as `flowers_tvtsplit/{train,val,test}/<class>/*.jpg`
# (4,242 original-size JPEGs; the same files and split as ../shared/data/flowers_paper_split.csv). Pinned
# to one commit. GitHub generates its archives on the fly, so their bytes are not a stable thing to
# pin; the *content* is: `tree_digest` of the extracted `flowers_tvtsplit/` (computed from that commit).
CS229_COMMIT = "f34fd567a048e5f067ed10956dd2f1d549360542"
CS229_URL = f"https://codeload.github.com/rui-yan/CS229-final-project/tar.gz/{CS229_COMMIT}"
CS229_TREE_SHA256 = "4509bcc2d12ba7d427bf08c8d987cdb85c4dea68e8e9eaf9e897aaa3b1054d00"
CS229_SPLITS = ("train", "val", "test")


def tree_digest(files: dict[str, bytes | Path]) -> str:
    """SHA-256 of the sorted lines `<relative path>\t<SHA-256 of the file>`: one hash for a whole folder."""
    lines = []
    for rel, content in files.items():
        digest = hashlib.sha256(content).hexdigest() if isinstance(content, bytes) else sha256_file(content)
        lines.append(f"{rel}\t{digest}")
    return hashlib.sha256(("\n".join(sorted(lines)) + "\n").encode()).hexdigest()


def download_cs229(dest: str | Path = "data/flowers_cs229", url: str = CS229_URL,
                   tree_sha256: str | None = CS229_TREE_SHA256, timeout: float = 30.0,
                   progress: bool = True) -> tuple[Path, Path]:
    """The paper's data and split from its repository: `dest/<class>/<image>` and `<dest>_paper_split.csv`.

    The archive (the whole repository at `CS229_COMMIT`, about 500 MB) is streamed to a temporary file, only
    `flowers_tvtsplit/<split>/<class>/<image>` is extracted (safely: `tarfile`'s "data" filter, no links),
    into a temporary folder next to `dest`, and the extracted files are checked against `tree_sha256`
    before anything is moved onto `dest`; a mismatch deletes everything and installs nothing. Returns the
    dataset folder and the manifest (path,split) that reproduces the paper's split. Idempotent.
    """
    dest = Path(dest)
    manifest = dest.parent / f"{dest.name}_paper_split.csv"
    if has_dataset(dest) and manifest.is_file():
        return dest, manifest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"Cannot install the paper's flowers into {dest.resolve()}: it exists and is not an empty "
                        "folder. Nothing was changed. Pass another destination with --dest.")
    with _staging(dest) as (archive, extract_dir):
        with open(archive, "wb") as out:
            _fetch(url, out, timeout=timeout, progress=progress)
        splits = _extract_tvtsplit(archive, extract_dir, url=url, progress=progress)
        if not splits:
            raise UserError(f"The archive from {url} holds no flowers_tvtsplit/<split>/<class>/ images, so nothing "
                            f"was installed at {dest}. Check the URL. " + _ALTERNATIVES)
        if tree_sha256 is not None:
            actual = tree_digest({f"{split}/{rel}": extract_dir / rel for rel, split in splits.items()})
            if actual != tree_sha256:
                raise UserError(
                    f"The flowers extracted from {url} are not the paper's files (content SHA-256 {actual}, "
                    f"expected {tree_sha256}), so nothing was installed at {dest}. The download was corrupted or "
                    "the repository changed; run it again, or use the shared copy (BAGNET_DATA=../shared/data/"
                    "flowers with ../shared/data/flowers_paper_split.csv).")
        _publish(extract_dir, dest)
    lines = ["path,split"] + [f"{rel},{split}" for rel, split in sorted(splits.items())]
    manifest.write_text("\n".join(lines) + "\n")  # after the data: never a manifest without its images
    return dest, manifest


def _extract_tvtsplit(archive: Path, into: Path, *, url: str, progress: bool) -> dict[str, str]:
    """Extract `*/flowers_tvtsplit/<split>/<class>/<image>` as `into/<class>/<image>`; return {path: split}."""
    from tqdm.auto import tqdm

    splits: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            chosen = []
            for m in tar:
                parts = PurePosixPath(m.name).parts
                if "flowers_tvtsplit" not in parts:
                    continue
                rest = parts[parts.index("flowers_tvtsplit") + 1:]
                if not m.isfile() or len(rest) != 3 or rest[0] not in CS229_SPLITS or not is_image_name(rest[2]):
                    continue
                why = _refusal(m, into) or (None if rest[1] in FLOWER_CLASSES else f"{m.name!r}: unknown class")
                if why is not None:
                    raise UserError(f"The archive from {url} holds an unexpected member ({why}); nothing was "
                                    "installed. " + _ALTERNATIVES)
                target = f"{rest[1]}/{rest[2]}"
                if target in splits:
                    raise UserError(f"The archive from {url} holds {target} in two splits; nothing was installed.")
                splits[target] = rest[0]
                chosen.append(m.replace(name=target, mode=0o644))
            for cls in sorted({t.split("/")[0] for t in splits}):
                (into / cls).mkdir()
            for m in tqdm(chosen, desc="extracting", unit="img", disable=not progress):
                tar.extract(m, into, filter="data")
    except UserError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"The archive downloaded from {url} could not be extracted ({exc}); nothing was installed. "
                        "Run the download again. " + _ALTERNATIVES) from exc
    return splits
