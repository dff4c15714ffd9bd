"""The course end to end: notebooks 01-05 through papermill with the smoke profile, then what they produced.

Runs on the shared flowers when present (with the paper's split), else on a small synthetic ImageFolder.
"""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from bagnet_lib.runner import NOTEBOOK_DIR, NOTEBOOKS, NotebookFailed, reproduce

from .conftest import PAPER_SPLIT, shared_flowers

EXPECTED_FIGURES = [
    "01_split_counts.png", "01_samples.png", "01_image_sizes.png", "01_augmentation.png",
    "02_resnet50_history.png", "02_resnet50_confusion.png", "02_resnet50_gradcam.png",
    "03_bagnet33_history.png", "03_bagnet33_confusion.png", "03_bagnet33_gradcam.png",
    "03_bagnet33_receptive_field.png", "03_bagnet33_evidence.png",
    "04_blackout_masks.png", "04_drop_curve.png", "04_blackout_kinds.png", "04_structured.png",
    "04_aggregations.png", "04_explorer.png", "04_frontier.png",
]


def test_committed_notebooks_carry_no_outputs_and_one_parameters_cell():
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name} needs exactly one parameters cell"
        assert nb.cells[0].cell_type == "markdown" and "What this notebook teaches" in nb.cells[0].source
        for key in ("PROFILE", "RUN_DIR", "DATA_DIR", "SEED"):
            assert f"{key} =" in tagged[0].source, (name, key)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, synthetic_root):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    data = shared_flowers()
    manifest = PAPER_SPLIT if data is not None and PAPER_SPLIT.is_file() else None
    timings = reproduce("smoke", run_dir, data or synthetic_root, manifest, seed=0, cell_timeout=600)
    return run_dir, timings, data is None


@pytest.mark.slow
def test_every_notebook_ran_without_error_cells(smoke_run):
    run_dir, timings, _ = smoke_run
    assert list(timings) == list(NOTEBOOKS) and all(t > 0 for t in timings.values())
    for name in NOTEBOOKS:
        nb = nbformat.read(run_dir / "notebooks" / name, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, (name, errors[:1])
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and "PROFILE = \"smoke\"" in injected[0].source


@pytest.mark.slow
def test_results_json_has_the_expected_keys_and_sane_values(smoke_run):
    run_dir, timings, synthetic = smoke_run
    summary = json.loads((run_dir / "results" / "summary.json").read_text())
    assert summary["profile"] == "smoke" and summary["synthetic_data"] is synthetic
    for model in ("resnet50", "bagnet33"):
        for part in ("train", "test"):
            assert 0.0 <= summary[model][part]["acc"] <= 1.0
            assert 0.0 < summary[model][part]["loss"] < float("inf")
    paper = {(b["kind"], b["drop_frac"]) for b in summary["blackout"] if b["aggregation"] == "mean"}
    assert {("checkerboard", 0.5), ("raster", 0.5), ("random", 0.25), ("random", 0.5), ("random", 0.75)} <= paper
    assert {b["setting"] for b in summary["blackout"]} >= {"alternating", "random", "channel", "pixel"}
    verdicts = summary["verdicts"]
    assert all(set(v) == {"claim", "reading", "verdict", "evidence", "caveat", "numbers"} for v in verdicts)
    assert [(v["claim"][:3], v["reading"]) for v in verdicts] == [
        ("(a)", "model"), ("(b)", "patch"), ("(b)", "channel"), ("(c)", "patch"), ("(c)", "channel"), ("(d)", "patch"),
        ("(e)", "compute")]
    assert verdicts[6]["verdict"] in ("supported", "not supported")
    assert verdicts[0]["verdict"] == "not tested in the paper's setting"  # smoke trains from scratch
    assert all(v["verdict"] in ("supported", "not supported", "inconclusive") for v in verdicts[1:5])
    assert verdicts[5]["verdict"].split(":")[0].split(",")[0] in ("supported", "not supported")
    assert {"mean_fit", "accuracy_fit"} <= set(verdicts[5]["numbers"])
    frontier = pd.read_csv(run_dir / "results" / "frontier.csv")
    assert list(frontier.columns) == ["model", "method", "parameter", "gflops_per_image", "acc", "acc_ci_low",
                                      "acc_ci_high", "n_images", "pareto"]
    assert {"dense", "kept patches, random", "anytime (stop when confident)", "fewer pixels (dense)"} <= set(
        frontier["method"]) and set(frontier["model"]) == {"bagnet33", "resnet50"}
    front = frontier[frontier["pareto"]]
    for _, p in front.iterrows():  # nothing beats a front point
        assert not ((frontier["gflops_per_image"] <= p["gflops_per_image"]) & (frontier["acc"] >= p["acc"])
                    & ((frontier["gflops_per_image"] < p["gflops_per_image"]) | (frontier["acc"] > p["acc"]))).any()
    costs = json.loads((run_dir / "results" / "frontier_costs.json").read_text())
    assert costs["sparse_check_max_abs_diff"] < 1e-3 and costs["bagnet_gflops"] > costs["resnet_gflops"] > 0
    rows = {(r["setting"], r["reading"]) for r in summary["table1"]}
    assert ("BagNet-33, random 25%", "patch") in rows and ("BagNet-33, random 25%", "channel") in rows
    assert any(s.startswith("ResNet-50 (best validation epoch") for s, _ in rows)
    assert summary["data_dir"] in ("$BAGNET_DATA", "../shared/data/flowers") or summary["data_dir"].startswith("<")
    # the runner completes the write-up's summary with every notebook's time, its own included
    assert summary["notebook_seconds"] == timings and abs(summary["minutes"] - sum(timings.values()) / 60) < 1e-9
    curve = summary["drop_curve"]
    assert {c["aggregation"] for c in curve} == {"mean", "zero"} and all(c["n_masks"] >= 1 for c in curve)


@pytest.mark.slow
def test_every_expected_figure_is_a_non_empty_png(smoke_run):
    run_dir, _, _ = smoke_run
    for name in EXPECTED_FIGURES:
        path = run_dir / "figures" / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, name


@pytest.mark.slow
def test_report_holds_table_1_and_the_verdicts(smoke_run):
    run_dir, _, synthetic = smoke_run
    text = (run_dir / "REPORT.md").read_text()
    assert "## Table 1" in text and "| ResNet-50 |" in text and "| BagNet-33 |" in text
    assert "0.9093" in text and "0.8821" in text  # the paper's column
    assert "## Verdicts" in text and "(c) about 25% can be dropped" in text and "reading `channel`" in text
    assert "a spatial analogue of the code's index parity" in text and "best validation epoch" in text
    assert ("SYNTHETIC" in text) is synthetic
    assert "](figures/04_drop_curve.png)" in text and "](figures/04_blackout_masks.png)" in text


@pytest.mark.slow
def test_a_failing_notebook_stops_the_run_and_names_the_cell(tmp_path, synthetic_root):
    broken = tmp_path / "nb"
    broken.mkdir()
    nb = nbformat.read(NOTEBOOK_DIR / NOTEBOOKS[0], as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell("raise RuntimeError('deliberately broken')"))
    nbformat.write(nb, broken / NOTEBOOKS[0])
    from bagnet_lib import runner

    with pytest.raises(NotebookFailed, match=r"01_data_exploration.ipynb failed in cell .*deliberately broken"):
        runner.run_notebook(NOTEBOOKS[0], tmp_path / "run",
                            {"PROFILE": "smoke", "RUN_DIR": str(tmp_path / "run"), "DATA_DIR": str(synthetic_root),
                             "MANIFEST": None, "SEED": 0}, notebook_dir=broken)
    assert (tmp_path / "run" / "notebooks" / NOTEBOOKS[0]).is_file()  # kept, with the traceback


def test_publish_copies_real_runs_and_refuses_smoke_or_synthetic(tmp_path):
    from bagnet_lib.runner import publish

    def fake_run(name, profile, synthetic):
        run = tmp_path / name
        (run / "figures").mkdir(parents=True)
        (run / "results").mkdir()
        (run / "run.json").write_text(json.dumps({"profile": {"name": profile}, "synthetic": synthetic}))
        (run / "figures" / "04_drop_curve.png").write_bytes(b"\x89PNG fake")
        (run / "results" / "summary.json").write_text("{}")
        (run / "REPORT.md").write_text("# r\n![04_drop_curve.png](figures/04_drop_curve.png)\n")
        return run

    repo = tmp_path / "repo"
    assert publish(fake_run("a", "smoke", False), repo) is None
    assert publish(fake_run("b", "cpu", True), repo) is None
    assert not repo.exists()
    publish(fake_run("c", "cpu", False), repo)
    assert (repo / "figures" / "cpu" / "04_drop_curve.png").is_file()
    assert (repo / "results" / "cpu" / "summary.json").is_file()
    assert "](figures/cpu/04_drop_curve.png)" in (repo / "REPORT.md").read_text()
    assert "](../../figures/cpu/04_drop_curve.png)" in (repo / "results" / "cpu" / "REPORT.md").read_text()


@pytest.mark.slow
def test_resume_skips_finished_notebooks_and_a_failure_keeps_earlier_outputs(smoke_run, tmp_path, capsys):
    run_dir, timings, _ = smoke_run
    meta = json.loads((run_dir / "run.json").read_text())
    data, manifest = meta["data_dir"], meta["manifest"]
    again = reproduce("smoke", run_dir, data, manifest, seed=0, resume=True, cell_timeout=600)
    out = capsys.readouterr().out
    assert out.count("skipped (--resume") == len(NOTEBOOKS)
    assert again == timings  # nothing ran; the recorded times are kept
    # a broken notebook 04: 01-03 are skipped, 04 fails naming itself, earlier outputs stay as they were
    broken = tmp_path / "notebooks"
    broken.mkdir()
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        if name.startswith("04"):
            nb.cells.insert(5, nbformat.v4.new_code_cell("raise ValueError('broken on purpose')"))
        nbformat.write(nb, broken / name)
    before = {p: p.read_bytes() for p in sorted((run_dir / "notebooks").glob("0[123]_*.ipynb"))}
    before[run_dir / "split.csv"] = (run_dir / "split.csv").read_bytes()
    with pytest.raises(NotebookFailed, match=r"04_blackout_experiments.ipynb failed in cell \d+ \(ValueError: broken on purpose\)"):
        reproduce("smoke", run_dir, data, manifest, seed=0, resume=True, cell_timeout=600, notebook_dir=broken)
    assert capsys.readouterr().out.count("skipped (--resume") == 3
    assert all(p.read_bytes() == content for p, content in before.items())
    failed = nbformat.read(run_dir / "notebooks" / "04_blackout_experiments.ipynb", as_version=4)
    assert any(o.output_type == "error" for c in failed.cells if c.cell_type == "code" for o in c.outputs)
    # a later --resume reruns 04 (it failed) and 05 (it comes after), not 01-03
    reproduce("smoke", run_dir, data, manifest, seed=0, resume=True, cell_timeout=600)
    out = capsys.readouterr().out
    assert out.count("skipped (--resume") == 3 and "04_blackout_experiments.ipynb done" in out
