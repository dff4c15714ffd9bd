"""Shared fixtures: the real flowers when present (else tests skip with the reason), tiny synthetic data otherwise."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPEC = SHARED / "spec" / "bagnet_state_dict_layout.json"
PAPER_SPLIT = SHARED / "data" / "flowers_paper_split.csv"


def shared_flowers() -> Path | None:
    """The real dataset: $BAGNET_DATA if it holds the flowers, else ../shared/data/flowers, else None; absolute, so
    that a relative $BAGNET_DATA means the same folder to the notebooks, which run in notebooks/."""
    for cand in (os.environ.get("BAGNET_DATA"), SHARED / "data" / "flowers"):
        if cand and (Path(cand) / "daisy").is_dir():
            return Path(cand).resolve()
    return None


@pytest.fixture(scope="session")
def flowers() -> Path:
    path = shared_flowers()
    if path is None:
        pytest.skip("the flowers dataset is not here (no ../shared/data/flowers and no BAGNET_DATA); "
                    "data tests run where it is")
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic flowers dataset (16 images per class at 64 px), made once per test session."""
    from bagnet_lib.data.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_per_class=16, image_size=64,
                                      seed=0, progress=False)


@pytest.fixture(autouse=True)
def _no_manifest_from_the_environment(monkeypatch):
    """`make lab` users may export BAGNET_MANIFEST; tests choose their split explicitly."""
    monkeypatch.delenv("BAGNET_MANIFEST", raising=False)
