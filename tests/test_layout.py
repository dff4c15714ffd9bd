"""The library's shape: its public face, its folders, and layer contracts that really catch a wrong import."""
from __future__ import annotations

import doctest
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bagnet_lib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("data", "nets", "blackout", "writeup", "figures", "course", "bench")


def test_the_public_face_runs_its_example_and_exports_the_folders_own_objects():
    result = doctest.testmod(bagnet_lib, verbose=False)
    assert result.attempted >= 5 and result.failed == 0
    for name in bagnet_lib.__all__:
        obj = getattr(bagnet_lib, name)
        if callable(obj):  # every exported function and class is defined in one of the folders (or errors)
            assert obj.__module__.split(".")[1] in (*FOLDERS, "errors"), (name, obj.__module__)
    for name in ("build_model", "bagnet9", "bagnet17", "bagnet33", "resnet50", "make_mask", "aggregate",
                 "cache_logits", "sweep", "summarize_sweep", "get_profile", "prepare_run"):
        assert name in bagnet_lib.__all__, name


def test_each_folder_says_what_it_holds_and_the_old_flat_modules_are_gone():
    for folder in FOLDERS:
        doc = importlib.import_module(f"bagnet_lib.{folder}").__doc__
        assert doc and len(doc.split()) > 10, folder
    top = sorted(p.name for p in (ROOT / "bagnet_lib").iterdir() if p.name not in {"__init__.py", "__pycache__"})
    assert top == sorted(["__main__.py", "cli.py", "errors.py", "faults.py", "io.py", *FOLDERS])
    for old in ("pipeline", "experiments", "summary", "models", "train", "stats", "views", "runner", "plots"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"bagnet_lib.{old}")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)})


@pytest.mark.parametrize("module, bad_import, contract", [
    ("nets/train.py", "from bagnet_lib.blackout import sweep as _upward", "Layers"),
    ("data/folder.py", "from bagnet_lib.nets import models as _upward", "Layers"),
    ("writeup/seeds.py", "from bagnet_lib.writeup import summary as _circle", "No import cycles"),
    ("blackout/pixels.py", "from bagnet_lib.blackout import channels as _sibling", "independent"),
])
def test_the_layer_contracts_pass_and_fail_on_a_deliberately_wrong_import(tmp_path, module, bad_import, contract):
    shutil.copytree(ROOT / "bagnet_lib", tmp_path / "bagnet_lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    ok = _lint(tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    target = tmp_path / "bagnet_lib" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    broken = _lint(tmp_path)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout, broken.stdout + broken.stderr
    report = broken.stdout.split("Broken contracts", 1)[1]  # each broken contract, with the import that breaks it
    assert contract in report, broken.stdout
    importer = "bagnet_lib." + module.removesuffix(".py").replace("/", ".")
    assert importer in report or "." + module.split("/")[0] in report, broken.stdout


def test_every_relative_link_of_the_readme_and_the_docs_reaches_a_file():
    import re

    pages = [ROOT / "README.md", ROOT / "REPORT.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted(ROOT.glob("*/README.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken, broken
