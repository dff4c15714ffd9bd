"""The write-up's pieces that do not need a trained run."""
from __future__ import annotations

import pandas as pd

from bagnet_lib.blackout.study import drop_curve_summary
from bagnet_lib.writeup.readme import update_readme
from bagnet_lib.writeup.report import drop_curve_table, structured_table


def test_drop_curve_summary_and_table_pair_mean_with_zero():
    rows = []
    for frac in (0.0, 0.25, 0.5):
        for seed in range(4):
            for agg, loss in (("mean", 0.5 + frac), ("zero", 0.5 + 2 * frac)):
                rows.append({"experiment": "curve", "model": "bagnet33", "kind": "random", "drop_frac": frac,
                             "seed": seed, "aggregation": agg, "acc": 0.8 - frac * 0.1 * (seed % 2), "loss": loss})
    rows.append({"experiment": "paper", "model": "bagnet33", "kind": "random", "drop_frac": 0.5, "seed": 0,
                 "aggregation": "mean", "acc": 0.1, "loss": 9.0})  # not part of the curve
    curve = drop_curve_summary(pd.DataFrame(rows))
    assert len(curve) == 6 and {c["n_masks"] for c in curve} == {4}
    half = next(c for c in curve if c["drop_frac"] == 0.5 and c["aggregation"] == "mean")
    assert abs(half["acc_mean"] - 0.775) < 1e-12 and half["acc_spread"][0] < 0.775 < half["acc_spread"][1]
    table = "\n".join(drop_curve_table(curve, fracs=(0.0, 0.5, 0.9)))
    assert "| 50% | 4 | 0.775 [" in table and "| 1.000 | 0.775 | 1.500 |" in table
    assert "| 0% | 4 | 0.800 [0.800, 0.800] | 0.500 | 0.800 | 0.500 |" in table
    assert "90%" not in table  # fractions without data are left out, not invented


def test_structured_table_names_what_each_mask_keeps():
    entry = lambda kind, frac, acc: {"kind": kind, "drop_frac": frac, "aggregation": "mean",  # noqa: E731
                                     "model": "bagnet33", "acc_mean": acc, "loss_mean": 1.0}
    table = "\n".join(structured_table([entry("topk", 0.75, 0.9), entry("bottomk", 0.75, 0.3)]))
    assert "| keep the most confident patches (an oracle: ranked by the full-image prediction) | – | – | 0.900 (loss 1.000) |" in table
    assert "| keep the least confident patches (likewise an oracle) | – | – | 0.300 (loss 1.000) |" in table
    assert "| keep the centre, drop the outer ring | – | – | – |" in table


TIMINGS = {"01_data_exploration.ipynb": 70.2, "02_train_resnet50.ipynb": 600.0, "03_train_bagnet.ipynb": 1700.4,
           "04_blackout_experiments.ipynb": 100.0, "05_writeup.ipynb": 4.6}


def _summary() -> dict:
    model = lambda acc: {"train": {"acc": acc + 0.05, "loss": 0.5},  # noqa: E731
                         "test": {"acc": acc, "loss": 0.7, "acc_ci": [acc - 0.04, acc + 0.04]}}
    return {"profile": "cpu", "seed": 0, "n_test": 426, "bagnet": "bagnet33",
            "setting": {"pretrained": False, "image_size": 160, "train_crop": 128, "grid": [16, 16], "width": 0.25,
                        "epochs": {"resnet50": 45, "bagnet33": 40}, "split": "the paper's split (its manifest)"},
            "resnet50": model(0.781), "bagnet33": model(0.762),
            "table1": [{"setting": "ResNet-50", "reading": "model", "acc": 0.781, "acc_ci": [0.741, 0.821],
                        "loss": 0.7, "paper_acc": 0.9093, "paper_loss": 0.2847},
                       {"setting": "BagNet-33, random 25%", "reading": "channel", "acc": 0.76, "n_masks": 30,
                        "mask_spread": [0.755, 0.765], "diff": -0.012, "diff_ci": [-0.02, -0.004],
                        "paper_acc": 0.8827, "paper_loss": 0.4123}],
            "verdicts": [{"claim": "(c) about 25% can be dropped without loss of accuracy", "reading": "patch",
                          "verdict": "supported", "evidence": "all kept 0.762 → 0.760", "caveat": "nothing is saved"}]}


def test_update_readme_rewrites_only_its_marked_blocks(tmp_path):
    readme = tmp_path / "README.md"
    before = ("# title\n\nintro\n\n## Results\n<!-- results:start -->\nold table\n<!-- results:end -->\n\n"
              "## Performance\n<!-- timings:start -->\nold times\n<!-- timings:end -->\ntail text\n")
    readme.write_text(before)
    assert update_readme(readme, _summary(), TIMINGS)
    text = readme.read_text()
    assert "old table" not in text and "old times" not in text
    assert text.startswith("# title\n\nintro\n\n## Results\n<!-- results:start -->\n") and text.endswith("tail text\n")
    assert "| ResNet-50 | model | 0.781 | [0.741, 0.821] | – | – | 0.700 | 0.9093 | 0.2847 |" in text
    assert ("| BagNet-33, random 25% | channel | 0.760 | – | [0.755, 0.765] (30 masks) | -0.012 [-0.020, -0.004] "
            "| – | 0.8827 | 0.4123 |") in text
    assert ("from scratch: 160 px (training crops 128 px), a 16×16 patch grid, width 0.25, ResNet-50 45 / BagNet-33 40 "
            "epochs") in text and "41.3 min" in text
    assert ("- **(c) about 25% can be dropped without loss of accuracy** — reading `patch`: **supported**. "
            "all kept 0.762 → 0.760. *Caveat:* nothing is saved.") in text
    assert "](figures/cpu/04_drop_curve.png)" in text and "](figures/cpu/04_frontier.png)" in text
    assert "| 70 | 600 | 1700 | 100 | 5 | 41.3 min |" in text
    assert update_readme(readme, _summary(), TIMINGS) and readme.read_text() == text  # idempotent


def test_each_networks_training_crop_and_adaptation_are_named_in_the_setting_and_the_readme(tmp_path):
    from bagnet_lib.writeup.report import setting_table

    summary = _summary()
    summary["setting"].update(image_size=224, grid=[24, 24], window_px=33, pretrained=False, feature_extract=False,
                              precision="bf16", n_train=2968, n_val=848, n_test=426,
                              train_crop={"resnet50": 128, "bagnet33": 144},
                              adaptation={"resnet50": "2 epochs of the head", "bagnet33": "2 epochs of the head"})
    table = "\n".join(setting_table(summary))
    assert "| 224 px, training crops ResNet-50 128 px, BagNet-33 144 px, 24×24 grid of 33 px windows |" in table
    assert "| adapted to the test size after training | no (trained and tested at 224 px) | both networks: 2 epochs " \
           "of the head, on the training images |" in table
    summary["setting"]["adaptation"]["resnet50"] = None
    assert "| BagNet-33: 2 epochs of the head, on the training images |" in "\n".join(setting_table(summary))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n<!-- timings:start -->\n<!-- timings:end -->\n")
    assert update_readme(readme, summary, TIMINGS)
    assert ("from scratch: 224 px (training crops ResNet-50 128 px, BagNet-33 144 px; BagNet-33 then 2 epochs of the "
            "head), a 24×24 patch grid") in readme.read_text()
    summary["setting"]["adaptation"]["resnet50"] = "2 epochs of the head"
    assert update_readme(readme, summary, TIMINGS)
    assert ("from scratch: 224 px (training crops ResNet-50 128 px, BagNet-33 144 px; both networks then 2 epochs of "
            "the head), a 24×24 patch grid") in readme.read_text()


def test_generated_blocks_are_found_in_the_docs_pages_beside_the_readme(tmp_path):
    from bagnet_lib.writeup.readme import update_block

    readme, docs = tmp_path / "README.md", tmp_path / "docs"
    docs.mkdir()
    readme.write_text("# title\n<!-- results:start -->\nold table\n<!-- results:end -->\n")
    (docs / "performance.md").write_text("# Performance\n<!-- timings:start -->\nold times\n<!-- timings:end -->\n")
    (docs / "profiles.md").write_text("# Profiles\n<!-- tuning:start -->\nold tuning\n<!-- tuning:end -->\nrest\n")
    assert update_readme(readme, _summary(), TIMINGS)
    assert "old table" not in readme.read_text() and "41.3 min" in readme.read_text()
    perf = (docs / "performance.md").read_text()
    assert "old times" not in perf and "| 70 | 600 | 1700 | 100 | 5 | 41.3 min |" in perf
    assert "| 70 | 600" not in readme.read_text()  # each block is written where it lives, nowhere else
    assert update_block(readme, "tuning", "new tuning")
    assert (docs / "profiles.md").read_text() == ("# Profiles\n<!-- tuning:start -->\nnew tuning\n<!-- tuning:end -->\n"
                                                 "rest\n")
    before = {p: p.read_bytes() for p in (readme, *docs.iterdir())}
    assert update_block(readme, "nowhere", "x") is False
    assert {p: p.read_bytes() for p in before} == before


def test_update_readme_leaves_a_readme_without_blocks_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n<!-- results:start -->\nonly one of the two blocks\n<!-- results:end -->\n")
    before = readme.read_bytes()
    assert update_readme(readme, _summary(), TIMINGS) is False
    assert readme.read_bytes() == before


def test_published_paths_say_nothing_of_this_machines_layout(monkeypatch, tmp_path):
    from bagnet_lib.io import PROJECT_ROOT, display_path

    monkeypatch.delenv("BAGNET_DATA", raising=False)
    assert display_path(PROJECT_ROOT / "data" / "synthetic") == "data/synthetic"
    assert display_path(PROJECT_ROOT.parent / "shared" / "data" / "flowers") == "../shared/data/flowers"
    assert display_path(PROJECT_ROOT.parent / "elsewhere" / "flowers") == "<flowers>"  # a sibling of the clone
    assert display_path(tmp_path / "synthetic0") == "<synthetic0>"
    monkeypatch.setenv("BAGNET_DATA", str(tmp_path))
    assert display_path(tmp_path) == "$BAGNET_DATA"


def test_the_reports_course_time_names_the_notebooks_it_sums():
    """Notebook 05 writes the report before its own time is known; the seed study rewrites it after."""
    import json
    from pathlib import Path

    from bagnet_lib.writeup.report import render_report

    summary = json.loads((Path(__file__).parents[1] / "results" / "cpu" / "summary.json").read_text())
    four = {"01_data_exploration.ipynb": 60.0, "02_train_resnet50.ipynb": 600.0, "03_train_bagnet.ipynb": 1200.0,
            "04_blackout_experiments.ipynb": 120.0}
    assert "Notebooks 01–04 took 33.0 min." in render_report(summary, timings=four)
    five = {**four, "05_writeup.ipynb": 30.0}
    assert "Notebooks 01–05 took 33.5 min." in render_report(summary, timings=five)
    assert " took " not in render_report(summary, timings=None).splitlines()[2]
