"""`download_flowers` against fake archives served from disk and from a loopback HTTP server.

No test touches the network: URLs are `file://` or `http://127.0.0.1:<port>`.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bagnet_lib.data.download import FLOWER_PHOTOS_SHA256, FLOWER_PHOTOS_URL, download_flowers, has_dataset
from bagnet_lib.data.folder import FLOWER_CLASSES, list_images
from bagnet_lib.errors import UserError

PLURALS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
PER_CLASS = 3


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """A proxy from the environment must not intercept the loopback server."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _jpeg_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_450_000_000
    tar.addfile(info, io.BytesIO(data))


def _make_archive(path: Path, extra=None) -> str:
    """Write a small flower_photos.tgz-like archive at `path`; return its SHA-256."""
    with tarfile.open(path, "w:gz") as tar:
        dir_info = tarfile.TarInfo("flower_photos")
        dir_info.type = tarfile.DIRTYPE
        dir_info.mode = 0o755
        tar.addfile(dir_info)
        _add(tar, "flower_photos/LICENSE.txt", b"All images in this archive are licensed under CC-BY 2.0\n")
        _add(tar, "flower_photos/notes.md", b"not a class\n")
        for c, plural in enumerate(PLURALS):
            for i in range(PER_CLASS):
                _add(tar, f"flower_photos/{plural}/{100 * c + i}_abc.jpg", _jpeg_bytes(100 * c + i))
        if extra is not None:
            extra(tar)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path) -> tuple[Path, str]:
    serve = tmp_path / "serve"
    serve.mkdir()
    path = serve / "flower_photos.tgz"
    return path, _make_archive(path)


@pytest.fixture
def http_server(tmp_path, request):
    """A loopback HTTP server on a free port serving tmp_path/serve; yields its base URL."""
    serve = tmp_path / "serve"
    serve.mkdir(exist_ok=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(serve)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    request.addfinalizer(stop)
    return f"http://127.0.0.1:{server.server_address[1]}"


def _leftovers(parent: Path, dest_name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{dest_name}."))


def _check_layout(dest: Path) -> None:
    assert sorted(p.name for p in dest.iterdir()) == sorted(FLOWER_CLASSES)
    samples = list_images(dest)
    assert len(samples) == PER_CLASS * len(PLURALS)
    assert sorted({s.label for s in samples}) == sorted(FLOWER_CLASSES)
    assert not list(dest.rglob("LICENSE.txt")) and not list(dest.rglob("notes.md"))
    for s in samples:
        with Image.open(dest / s.path) as im:
            assert im.size == (48, 40)


def test_constants_look_like_the_real_archive():
    assert FLOWER_PHOTOS_URL.endswith("/example_images/flower_photos.tgz")
    assert len(FLOWER_PHOTOS_SHA256) == 64 and int(FLOWER_PHOTOS_SHA256, 16) >= 0


def test_file_url_extracts_with_kaggle_names(tmp_path, archive):
    path, digest = archive
    dest = tmp_path / "out" / "flowers"
    got = download_flowers(dest, url=path.as_uri(), sha256=digest, progress=False)
    assert got == dest
    _check_layout(dest)
    assert has_dataset(dest)
    assert _leftovers(dest.parent, dest.name) == []
    assert (dest.stat().st_mode & 0o777) != 0o700  # not left with mkdtemp's private permissions


def test_http_download_and_idempotence(tmp_path, archive, http_server):
    path, digest = archive
    url = f"{http_server}/{path.name}"
    dest = tmp_path / "flowers"
    download_flowers(dest, url=url, sha256=digest, progress=False)
    _check_layout(dest)
    assert _leftovers(tmp_path, "flowers") == []

    marker = dest / "daisy" / "mine.jpg"  # something of the user's: must survive a second call
    marker.write_bytes(_jpeg_bytes(999))
    path.unlink()  # a second call must not even try to download (it would fail: the archive is gone)
    assert download_flowers(dest, url=url, sha256=digest, progress=False) == dest
    assert marker.exists()
    assert len(list_images(dest)) == PER_CLASS * len(PLURALS) + 1


def test_existing_empty_folder_is_filled(tmp_path, archive):
    path, digest = archive
    dest = tmp_path / "flowers"
    dest.mkdir()
    download_flowers(dest, url=path.as_uri(), sha256=digest, progress=False)
    _check_layout(dest)


def test_non_empty_folder_without_dataset_is_refused_and_kept(tmp_path, archive):
    path, digest = archive
    dest = tmp_path / "flowers"
    dest.mkdir()
    (dest / "todo.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an empty folder"):
        download_flowers(dest, url=path.as_uri(), sha256=digest, progress=False)
    assert (dest / "todo.txt").read_text() == "keep me"
    assert sorted(p.name for p in dest.iterdir()) == ["todo.txt"]


@pytest.mark.parametrize("via", ["file", "http"])
def test_wrong_hash_leaves_nothing(tmp_path, archive, http_server, via):
    path, digest = archive
    url = path.as_uri() if via == "file" else f"{http_server}/{path.name}"
    dest = tmp_path / "flowers"
    wrong = "0" * 64
    with pytest.raises(UserError) as err:
        download_flowers(dest, url=url, sha256=wrong, progress=False)
    msg = str(err.value)
    assert wrong in msg and digest in msg and "SHA-256" in msg
    assert not dest.exists()
    assert _leftovers(tmp_path, "flowers") == []
    assert path.exists()  # the source is not ours to delete


def test_unreachable_url_fails_fast_with_alternatives(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "flowers"
    with pytest.raises(UserError) as err:
        download_flowers(dest, url=f"http://127.0.0.1:{port}/x.tgz", timeout=3, progress=False)
    msg = str(err.value)
    # fast = the refusal itself is reported (no retry loop, no waiting for the timeout); not timed here
    assert "failed" in msg and f"127.0.0.1:{port}" in msg and "refused" in msg
    assert "BAGNET_DATA" in msg and "synthetic" in msg and "Kaggle" in msg
    assert not dest.exists() and _leftovers(tmp_path, "flowers") == []


def test_missing_file_and_http_404_are_user_errors(tmp_path, http_server):
    with pytest.raises(UserError, match="failed"):
        download_flowers(tmp_path / "a", url=(tmp_path / "nope.tgz").as_uri(), progress=False)
    with pytest.raises(UserError, match="404"):
        download_flowers(tmp_path / "b", url=f"{http_server}/nope.tgz", progress=False)
    assert _leftovers(tmp_path, "a") == [] and _leftovers(tmp_path, "b") == []


def test_not_a_tarball_is_a_user_error(tmp_path):
    bogus = tmp_path / "page.html"
    bogus.write_text("<html>captive portal</html>")
    digest = hashlib.sha256(bogus.read_bytes()).hexdigest()
    dest = tmp_path / "flowers"
    with pytest.raises(UserError, match="could not be extracted"):
        download_flowers(dest, url=bogus.as_uri(), sha256=digest, progress=False)
    assert not dest.exists() and _leftovers(tmp_path, "flowers") == []


def _evil_dotdot(tar):
    _add(tar, "../evil.txt", b"escaped")


def _evil_absolute(tar):
    _add(tar, "/tmp/bagnet_evil_absolute.txt", b"escaped")


def _evil_symlink(tar):
    info = tarfile.TarInfo("flower_photos/daisy/link.jpg")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    tar.addfile(info)


def _evil_fifo(tar):
    info = tarfile.TarInfo("flower_photos/daisy/pipe.jpg")
    info.type = tarfile.FIFOTYPE
    tar.addfile(info)


def _inner_hardlink(tar):  # points inside the archive: tarfile's filter alone would allow it, we refuse links
    info = tarfile.TarInfo("flower_photos/daisy/again.jpg")
    info.type = tarfile.LNKTYPE
    info.linkname = "flower_photos/daisy/0_abc.jpg"
    tar.addfile(info)


@pytest.mark.parametrize("extra", [_evil_dotdot, _evil_absolute, _evil_symlink, _evil_fifo, _inner_hardlink],
                         ids=["dotdot", "absolute", "symlink", "fifo", "hardlink"])
def test_malicious_members_are_rejected(tmp_path, extra):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    path = tmp_path / "evil.tgz"
    digest = _make_archive(path, extra=extra)
    dest = work / "flowers"
    with pytest.raises(UserError, match="unsafe member"):
        download_flowers(dest, url=path.as_uri(), sha256=digest, progress=False)
    assert not dest.exists()
    assert not (work / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert not Path("/tmp/bagnet_evil_absolute.txt").exists()
    assert _leftovers(work, "flowers") == []


def test_archive_without_class_folders_is_a_user_error(tmp_path):
    path = tmp_path / "other.tgz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "something/else.jpg", _jpeg_bytes(1))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    dest = tmp_path / "flowers"
    with pytest.raises(UserError, match="no images"):
        download_flowers(dest, url=path.as_uri(), sha256=digest, progress=False)
    assert not dest.exists() and _leftovers(tmp_path, "flowers") == []


# ----------------------------------------------------------------------------- the paper's data (--source cs229)
def _make_cs229_archive(path: Path, tamper: bool = False) -> str:
    """A miniature of the paper's repository archive; returns the tree digest of its flowers_tvtsplit/."""
    from bagnet_lib.data.download import tree_digest

    files, top = {}, "CS229-final-project-abc/"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, top + "README.md", b"# not a flower")
        _add(tar, top + "flowers_original/daisy/o.jpg", _jpeg_bytes(500))  # the unsplit copy: ignored
        for s_i, split in enumerate(("train", "val", "test")):
            for c_i, cls in enumerate(FLOWER_CLASSES):
                data = _jpeg_bytes(100 * s_i + c_i)
                name = f"{split}/{cls}/{split}_{cls}.jpg"
                files[name] = data
                _add(tar, top + "flowers_tvtsplit/" + name, data + (b"x" if tamper and name.startswith("test/") else b""))
    return tree_digest(files)


def test_cs229_download_installs_the_papers_split_after_checking_the_content(tmp_path):
    from bagnet_lib.data.download import download_cs229
    from bagnet_lib.data.split import read_manifest

    digest = _make_cs229_archive(tmp_path / "repo.tgz")
    dest = tmp_path / "flowers_cs229"
    got, manifest = download_cs229(dest, url=(tmp_path / "repo.tgz").as_uri(), tree_sha256=digest, progress=False)
    assert got == dest and manifest == tmp_path / "flowers_cs229_paper_split.csv"
    assert sorted(p.name for p in dest.iterdir()) == sorted(FLOWER_CLASSES)
    split = read_manifest(dest, manifest)
    assert len(split) == 15 and split["split"].value_counts().to_dict() == {"train": 5, "val": 5, "test": 5}
    assert not (dest / "daisy" / "o.jpg").exists() and _leftovers(tmp_path, "flowers_cs229") == []
    # a second call finds it and downloads nothing (the archive is gone)
    (tmp_path / "repo.tgz").unlink()
    assert download_cs229(dest, url=(tmp_path / "repo.tgz").as_uri(), tree_sha256=digest, progress=False) == (
        dest, manifest)


def test_cs229_download_with_other_content_installs_nothing(tmp_path):
    from bagnet_lib.data.download import download_cs229

    digest = _make_cs229_archive(tmp_path / "good.tgz")
    _make_cs229_archive(tmp_path / "bad.tgz", tamper=True)
    dest = tmp_path / "flowers_cs229"
    with pytest.raises(UserError, match="not the paper's files") as err:
        download_cs229(dest, url=(tmp_path / "bad.tgz").as_uri(), tree_sha256=digest, progress=False)
    assert digest in str(err.value)
    assert not dest.exists() and not (tmp_path / "flowers_cs229_paper_split.csv").exists()
    assert _leftovers(tmp_path, "flowers_cs229") == []
