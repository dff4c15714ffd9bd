"""Tuning runs: overrides are typed and checked, each run is recorded, the README table is read from the record."""
from __future__ import annotations

import json

import pytest

from bagnet_lib.course.tuning import replace_or_append, tune, tuning_table
from bagnet_lib.errors import UserError
from bagnet_lib.nets.profiles import parse_overrides


def test_overrides_are_typed_and_checked():
    assert parse_overrides(["image_size=160", "lr=0.1", "precision=bf16", "zero_init_residual=true",
                            "images_per_class=none"]) == {
        "image_size": 160, "lr": 0.1, "precision": "bf16", "zero_init_residual": True, "images_per_class": None}
    for bad in (["learning_rate=0.1"], ["image_size"], ["image_size=big"], ["name=x"]):
        with pytest.raises(UserError, match="--set"):
            parse_overrides(bad)


def test_a_tuning_run_is_recorded_and_tabled(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    out = tmp_path / "smoke.json"
    recs = tune("tiny run", {"image_size": 48, "epochs": 2}, ("resnet50", "bagnet33"), "smoke",
                tmp_path / "run", synthetic_root, out=out, progress=False)
    book = json.loads(out.read_text())
    assert [r["model"] for r in book["runs"]] == ["resnet50", "bagnet33"] and book["runs"] == json.loads(json.dumps(recs))
    r = book["runs"][0]
    assert r["settings"] == {"image_size": 48, "epochs": 2} and len(r["val_acc_by_epoch"]) == 2
    assert 1 <= r["best_epoch"] <= 2 and max(r["val_acc_by_epoch"]) == pytest.approx(r["best_val_acc"], abs=1e-4)
    assert "/tmp" not in json.dumps(book)  # no machine-specific paths in a committed record
    tune("tiny run", {"image_size": 48, "epochs": 2}, ("resnet50",), "smoke", tmp_path / "run", synthetic_root,
         out=out, progress=False)  # the same run again: resumed, and its record replaced, not duplicated
    assert len(json.loads(out.read_text())["runs"]) == 2
    table = tuning_table(json.loads(out.read_text()))
    assert table.count("| tiny run |") == 1 and f"{r['best_val_acc']:.3f} / {r['test_acc']:.3f} (" in table


def test_a_remeasured_tuning_row_keeps_its_place_in_the_table():
    runs = [{"run": "a", "model": "resnet50", "v": 1}, {"run": "b", "model": "resnet50", "v": 1},
            {"run": "b", "model": "bagnet33", "v": 1}, {"run": "c", "model": "resnet50", "v": 1}]
    new = replace_or_append(runs, {"run": "b", "model": "resnet50", "v": 2})
    assert [(r["run"], r["model"], r["v"]) for r in new] == [("a", "resnet50", 1), ("b", "resnet50", 2),
                                                           ("b", "bagnet33", 1), ("c", "resnet50", 1)]
    assert replace_or_append(runs, {"run": "d", "model": "resnet50", "v": 1})[-1]["run"] == "d"
    assert len(runs) == 4 and runs[1]["v"] == 1  # the input list is not modified
