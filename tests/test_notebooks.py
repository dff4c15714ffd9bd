"""The course end to end: notebooks 01-05 through papermill with the smoke profile, then what they produced.

Runs on the shared flowers when present (with the paper's split), else on a small synthetic ImageFolder.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from bagnet_lib.course.record import read_records
from bagnet_lib.course.runner import NOTEBOOK_DIR, NOTEBOOKS, OPTIONAL_NOTEBOOKS, NotebookFailed, reproduce
from bagnet_lib.figures import registry
from tests.conftest import PAPER_SPLIT, ROOT, shared_flowers


def test_committed_notebooks_carry_no_outputs_and_one_parameters_cell():
    for name in NOTEBOOKS + OPTIONAL_NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name} needs exactly one parameters cell"
        intro = nb.cells[0].source
        assert nb.cells[0].cell_type == "markdown" and "What this notebook teaches" in intro
        assert "github.com/rui-yan/CS229-final-project" in intro and "openreview.net/forum?id=SkfMWhAqYQ" in intro
        assert nb.cells[-1].cell_type == "markdown" and nb.cells[-1].source.startswith(
            ("## Things to try", "## What to do next")), name
        if nb.cells[-1].source.startswith("## Things to try"):  # each prompt carries its expected outcome, folded
            prompts = re.split(r"(?m)^- ", nb.cells[-1].source)[1:]
            assert prompts and all("<details><summary>What you should see</summary>" in p and "</details>" in p
                                   for p in prompts), name
        declared = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line}
        if name in OPTIONAL_NOTEBOOKS:  # ImageNet, no flowers run: the shared names that apply (DATA_DIR: the folder)
            assert {"RUN_DIR", "DATA_DIR", "BAGNET"} <= declared and "PROFILE" not in declared, name
            continue
        assert {"PROFILE", "RUN_DIR", "DATA_DIR", "MANIFEST", "SEED"} <= declared, name  # the shared five
        assert "MODEL" not in declared, name  # one name per knob: the BagNet is BAGNET in 03, 04 and 05
        assert ("BAGNET" in declared) == (name[:2] in {"03", "04", "05"}), name
        assert ("NPROC" in declared) == (name[:2] in {"02", "03"}), name  # the two notebooks that train


def test_nproc_reaches_the_two_training_notebooks_only_when_set():
    from bagnet_lib.course.runner import _declared, course_parameters

    unset = course_parameters("smoke", Path("r"), None, None, 0)
    assert "NPROC" not in unset
    params = course_parameters("smoke", Path("r"), None, None, 0, nproc=2)
    for name in NOTEBOOKS:
        assert ("NPROC" in _declared(name, params, NOTEBOOK_DIR)) == (name[:2] in {"02", "03"}), name
    assert _declared(NOTEBOOKS[1], params, NOTEBOOK_DIR)["NPROC"] == 2


def _course(tmp_path_factory, synthetic_root, bagnet: str):
    run_dir = tmp_path_factory.mktemp(f"smoke_{bagnet}") / "run"
    data = shared_flowers()
    manifest = PAPER_SPLIT if data is not None and PAPER_SPLIT.is_file() else None
    timings = reproduce("smoke", run_dir, data or synthetic_root, manifest, seed=0, cell_timeout=600, bagnet=bagnet)
    return run_dir, timings, data is None


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, synthetic_root):
    return _course(tmp_path_factory, synthetic_root, "bagnet33")


IMAGE_REF = re.compile(r'!\[[^\]]*\]\(([^)\s]+)\)|<img[^>]*\bsrc="([^"]+)"')


def broken_images(path: Path) -> list[str]:
    """Image links of a notebook (markdown cells, Markdown and HTML outputs) that do not resolve beside the file:
    neither embedded (data:), nor on the web, nor a relative path to an existing file."""
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            texts.append(cell.source)
        for out in cell.get("outputs", []):
            texts += [out.get("data", {}).get(mime, "") for mime in ("text/markdown", "text/html")]
    bad = []
    for text in texts:
        for m in IMAGE_REF.finditer(text if isinstance(text, str) else "".join(text)):
            target = m.group(1) or m.group(2)
            if target.startswith(("data:", "https://", "http://")):
                continue
            if Path(target).is_absolute() or not (path.parent / target).is_file():
                bad.append(target)
    return bad


def test_broken_images_finds_a_link_that_points_nowhere(tmp_path):
    (tmp_path / "here.png").write_bytes(b"png")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("![a](here.png) ![b](../runs/x/figures/gone.png)")])
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert broken_images(tmp_path / "n.ipynb") == ["../runs/x/figures/gone.png"]


def test_the_published_notebooks_show_every_figure_they_link():
    published = sorted((ROOT / "results").glob("*/notebooks/*.ipynb"))
    assert published, "no published notebooks under results/<profile>/notebooks"
    for path in published:
        assert not broken_images(path), (path.relative_to(ROOT), broken_images(path))


def _records(run_dir) -> dict[str, dict]:
    return {name[:2]: read_records(run_dir / "notebooks" / name) for name in NOTEBOOKS}


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
        # the library's figures are shown as PNGs, not as "<Figure size …>" (a reader of the executed notebook sees them)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        figures_as_text = [o for o in outputs if "<Figure size" in str(o.get("data", {}).get("text/plain", ""))
                           and "image/png" not in o.get("data", {})]
        assert not figures_as_text, (name, figures_as_text[:1])
        if name[:2] in {"01", "02", "03", "04"}:
            assert any("image/png" in o.get("data", {}) for o in outputs), name


@pytest.mark.slow
def test_the_executed_notebooks_show_their_figures_with_the_run_directory_gone(smoke_run, tmp_path):
    """What a reader of the executed notebooks sees, anywhere: every figure is embedded (05's report sections too)."""
    run_dir, _, _ = smoke_run
    for name in NOTEBOOKS:
        shutil.copy(run_dir / "notebooks" / name, tmp_path / name)  # beside nothing of the run
        assert not broken_images(tmp_path / name), (name, broken_images(tmp_path / name))
        nb = nbformat.read(tmp_path / name, as_version=4)
        assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs), name
    five = nbformat.read(tmp_path / NOTEBOOKS[4], as_version=4)
    shown = "".join(o.get("data", {}).get("text/markdown", "") for c in five.cells if c.cell_type == "code"
                    for o in c.outputs)
    report = (run_dir / "REPORT.md").read_text()
    for head in (line for line in report.splitlines() if line.startswith("## ") and line != "## More figures"):
        assert shown.count(head) == 1, head  # each section of the report, once


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
    fields = {"claim", "reading", "verdict", "evidence", "caveat", "numbers"}
    assert all(set(v) - {"measure"} == fields for v in verdicts)
    assert [(v["claim"][:3], v["reading"], v.get("measure")) for v in verdicts] == [
        ("(a)", "model", None), ("(b)", "patch", None), ("(b)", "channel", None), ("(c)", "patch", None),
        ("(c)", "channel", None), ("(d)", "patch", "loss"), ("(d)", "patch", "accuracy"), ("(d)", "channel", "loss"),
        ("(d)", "channel", "accuracy"), ("(e)", "compute, BagNet-33 only", None), ("(e)", "compute", None)]
    assert all(v["verdict"] in ("supported", "not supported") for v in verdicts[9:])
    assert verdicts[0]["verdict"] == "not tested in the paper's setting"  # smoke trains from scratch
    assert all(v["verdict"] in ("supported", "not supported", "inconclusive") for v in verdicts[1:5])
    assert "at most 1 point lost" in verdicts[3]["claim"]  # (c) carries its tolerance
    assert "feature channels of a network trained from scratch" in verdicts[4]["caveat"]
    for v in verdicts[5:9]:  # (d): loss and accuracy, patches and channels, each against its null
        assert v["verdict"].split(":")[0].split(";")[0].split(",")[0] in ("supported", "not supported")
        assert [r["drop_frac"] for r in v["numbers"]["at"]] == [0.25, 0.5, 0.75] and "null_r2" in v["numbers"]
    assert "mean_fit" in verdicts[5]["numbers"]
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
    # the notebook times have one writer, the runner (timings.json); the summary does not copy them
    assert json.loads((run_dir / "results" / "timings.json").read_text()) == timings
    assert "notebook_seconds" not in summary and "minutes" not in summary
    curve = summary["drop_curve"]
    assert {c["aggregation"] for c in curve} == {"mean", "zero"} and all(c["n_masks"] >= 1 for c in curve)


@pytest.mark.slow
def test_every_registered_figure_is_a_non_empty_png_and_nothing_else_is_made(smoke_run):
    run_dir, _, _ = smoke_run
    expected = registry.expected("bagnet33")
    assert sorted(p.name for p in (run_dir / "figures").glob("*.png")) == sorted(expected)
    for name in expected:
        path = run_dir / "figures" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, name


@pytest.mark.slow
def test_the_notebooks_record_the_numbers_the_run_wrote(smoke_run):
    run_dir, _, _ = smoke_run
    rec = _records(run_dir)
    summary = json.loads((run_dir / "results" / "summary.json").read_text())
    assert rec["01"]["n_images"] == rec["01"]["n_train"] + rec["01"]["n_val"] + rec["01"]["n_test"] > 0
    assert rec["01"]["n_test"] == summary["n_test"] and len(rec["01"]["classes"]) == 5
    for nb, model in (("02", "resnet50"), ("03", "bagnet33")):
        assert rec[nb]["model"] == model and rec[nb]["test_acc"] == summary[model]["test"]["acc"]
        assert rec[nb]["best_epoch"] == summary[model]["best_epoch"]
    four = rec["04"]
    # section 2-3's claim, measured: the same mask gives the same accuracy under `mean` and `zero`, another loss
    assert four["test_acc_one_mask_mean"] == four["test_acc_one_mask_zero"]
    assert four["test_loss_one_mask_mean"] != four["test_loss_one_mask_zero"]
    written = sum(len(pd.read_csv(f)) for f in (run_dir / "results").glob("blackout_*.csv"))
    assert four["n_configurations"] == written > 100 and four["bagnet"] == "bagnet33"
    assert set(four["experiments"]) == {"paper", "curve", "structured", "aggregations", "channel", "pixel"}
    assert four["n_frontier_points"] == len(pd.read_csv(run_dir / "results" / "frontier.csv")) and four["n_pareto"] >= 1
    assert rec["05"]["verdicts"] == [[v["claim"][:3], v["reading"], v.get("measure", ""), v["verdict"]]
                                     for v in summary["verdicts"]]
    assert rec["05"]["sections"][:4] == ["title", "question", "setting", "table1"] and "limitations" in rec["05"]["sections"]
    assert rec["05"]["test_acc"] == {m: summary[m]["test"]["acc"] for m in ("resnet50", "bagnet33")}
    assert rec["05"]["seeds"] == [0] and "seeds" not in summary  # no seed study in this run directory


def _papermill_loop(run_dir, data, manifest, **parameters) -> None:
    """The course as a papermill user runs it: the same `-p` values for all five notebooks, no runner.

    Headless, as the runner does and notebooks/README.md tells papermill users: INTERACTIVE=False (nbclient can
    block forever on a cell that displays ipywidgets: jupyter/nbclient#312; it did once here, in notebook 04)."""
    values = {"PROFILE": "smoke", "RUN_DIR": run_dir, "DATA_DIR": data, "MANIFEST": manifest, "SEED": 0,
              "INTERACTIVE": False, **parameters}
    args = [x for k, v in values.items() if v is not None for x in ("-p", k, str(v))]
    for name in NOTEBOOKS:
        subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOK_DIR / name), str(run_dir / "notebooks" / name),
                        "-k", "python3", "--cwd", str(NOTEBOOK_DIR), *args], check=True, timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_bagnet17_passed_to_every_notebook_by_papermill_flows_through_03_04_and_05(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    (run_dir / "notebooks").mkdir(parents=True)
    data = shared_flowers()
    manifest = PAPER_SPLIT if data is not None and PAPER_SPLIT.is_file() else None
    # NPROC=2: notebooks 02 and 03 train through `torchrun --nproc_per_node=2` as child processes
    _papermill_loop(run_dir, data or synthetic_root, manifest, BAGNET="bagnet17", NPROC=2)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*_best.pt")) == ["bagnet17_best.pt", "resnet50_best.pt"]
    for model in ("resnet50", "bagnet17"):
        metrics = json.loads((run_dir / "results" / f"{model}_metrics.json").read_text())
        assert (metrics["world_size"], metrics["backend"]) == (2, "gloo"), model
    train_cell = next(c for c in nbformat.read(run_dir / "notebooks" / NOTEBOOKS[2], as_version=4).cells
                      if c.cell_type == "code" and "train_step" in c.source)
    shown = "".join(o.get("text", "") for o in train_cell.outputs if o.output_type == "stream")
    assert "[train] torchrun --standalone --nproc_per_node=2 -m bagnet_lib train --model bagnet17" in shown
    assert "bagnet17 epoch 1/1" in shown and "trained on 2 processes, backend gloo" in shown
    rec = _records(run_dir)
    assert rec["03"]["model"] == rec["04"]["bagnet"] == rec["05"]["bagnet"] == "bagnet17"
    summary = json.loads((run_dir / "results" / "summary.json").read_text())
    assert summary["bagnet"] == "bagnet17" and "bagnet33" not in summary
    assert summary["verdicts"][0]["claim"] == "(a) BagNet-17 is comparable to ResNet-50"
    assert sorted(p.name for p in (run_dir / "figures").glob("*.png")) == sorted(registry.expected("bagnet17"))
    frontier = pd.read_csv(run_dir / "results" / "frontier.csv")
    assert set(frontier["model"]) == {"bagnet17", "resnet50"}
    assert set(pd.read_csv(run_dir / "results" / "blackout_paper.csv")["model"]) == {"bagnet17"}
    text = (run_dir / "REPORT.md").read_text()
    assert "(BagNet-17)" in text.splitlines()[0] and "| BagNet-17, random 25% | patch |" in text
    # a second BagNet trained in the same run directory joins the frontier; bagnet9's windows are so small that
    # computing only the kept patches is cheaper at every fraction
    from bagnet_lib.blackout import study
    from bagnet_lib.course import pipeline

    run = pipeline.prepare_run(run_dir, "smoke", progress=False)
    pipeline.train_step(run, "bagnet9", progress=False)
    both = study.frontier_step(run, "bagnet17", progress=False)
    assert set(both["model"]) == {"bagnet17", "bagnet9", "resnet50"}
    costs = json.loads((run_dir / "results" / "frontier_costs.json").read_text())
    assert costs["bagnet"] == "bagnet17" and set(costs["bagnets"]) == {"bagnet17", "bagnet9"}
    assert costs["bagnets"]["bagnet9"]["break_even_keep_frac"] >= 1.0 > costs["bagnets"]["bagnet17"]["break_even_keep_frac"]


@pytest.mark.slow
def test_report_holds_table_1_and_the_verdicts(smoke_run):
    run_dir, _, synthetic = smoke_run
    text = (run_dir / "REPORT.md").read_text()
    assert "## Table 1" in text and "| ResNet-50 |" in text and "| BagNet-33 |" in text
    assert "0.9093" in text and "0.8821" in text  # the paper's column
    assert "(c) about 25% can be dropped" in text and "reading `channel`" in text
    # the write-up's order: question, setting, Table 1, claims (a) to (e), limitations, next steps
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    order = ["## The question", "## What this run did differently", "## Table 1", "## Claim (a)", "## Claims (b) and (c)",
             "## Claim (d)", "## Which patches matter", "## Claim (e)", "## Limitations", "## What to do next"]
    assert [next(i for i, h in enumerate(heads) if h.startswith(o)) for o in order] == sorted(
        next(i for i, h in enumerate(heads) if h.startswith(o)) for o in order)
    # each figure sits in its section, not in a list at the end
    assert text.index("04_drop_curve.png") < text.index("## Which patches matter") < text.index("04_frontier.png")
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
    from bagnet_lib.course import runner

    with pytest.raises(NotebookFailed, match=r"01_data_exploration.ipynb failed in cell .*deliberately broken"):
        runner.run_notebook(NOTEBOOKS[0], tmp_path / "run",
                            {"PROFILE": "smoke", "RUN_DIR": str(tmp_path / "run"), "DATA_DIR": str(synthetic_root),
                             "MANIFEST": None, "SEED": 0}, notebook_dir=broken)
    assert (tmp_path / "run" / "notebooks" / NOTEBOOKS[0]).is_file()  # kept, with the traceback


def test_publish_copies_real_runs_and_refuses_smoke_or_synthetic(tmp_path, monkeypatch):
    from bagnet_lib.course import runner
    from bagnet_lib.course.runner import publish

    shipped = []  # these runs have no networks; shipping them is tested on a smoke run (test_reference.py)
    monkeypatch.setattr(runner, "publish_networks", lambda run_dir, res: shipped.append(run_dir) or res / "networks")

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
    # a later publication replaces the earlier one: a file the new run does not make is gone
    (repo / "results" / "cpu" / "blackout_runs.csv").write_text("an older run's table")
    (repo / "figures" / "cpu" / "04_old_figure.png").write_bytes(b"\x89PNG old")
    publish(fake_run("d", "cpu", False), repo)
    assert sorted(p.name for p in (repo / "results" / "cpu").iterdir()) == ["REPORT.md", "summary.json"]
    assert sorted(p.name for p in (repo / "figures" / "cpu").iterdir()) == ["04_drop_curve.png"]
    assert [p.name for p in shipped] == ["c", "d"]  # every real publication ships its networks, no other


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


@pytest.mark.slow
def test_the_seed_study_runs_a_seed_on_another_machine_and_gathers_it_into_the_write_up(smoke_run, tmp_path, capsys):
    """Machine B (a copy of the finished run) trains seed 1 with `seeds --seeds 1`; its run directory is copied beside
    the run on machine A, where `seeds --gather` writes the table and the write-up without running any course."""
    import shutil

    from bagnet_lib.course.runner import seed_study

    src, _, _ = smoke_run
    base, remote = tmp_path / "a" / "smoke", tmp_path / "b" / "smoke"
    shutil.copytree(src, base)  # the module's run stays as the other tests expect it
    shutil.copytree(src, remote)
    seed_study(remote, [0, 1], cell_timeout=600)  # machine B: seed 0 is the run's own, seed 1 is trained
    assert capsys.readouterr().out.count("done in") >= len(NOTEBOOKS)  # seed 1's whole course ran
    seed_study(remote, [1], cell_timeout=600)  # again there: nothing of seed 1 is redone
    assert capsys.readouterr().out.count("skipped (--resume") == len(NOTEBOOKS)
    shutil.copytree(remote.parent / "smoke-seed1", base.parent / "smoke-seed1")  # brought over to machine A
    table = seed_study(base, [], gather=True, cell_timeout=600)
    out = capsys.readouterr().out
    assert "gathering the finished seeds beside smoke: [1]" in out and "training seed" not in out
    seed1 = base.parent / "smoke-seed1"
    assert table["seed"].tolist() == [0, 1] and table["run"].tolist() == ["smoke", "smoke-seed1"]
    assert json.loads((seed1 / "run.json").read_text())["seed"] == 1
    assert (base / "results" / "seeds.csv").read_text() == (remote / "results" / "seeds.csv").read_text()
    # each row holds its own run's numbers; seed 1 trained differently (another initialisation and data order)
    for run_dir, row in zip((base, seed1), table.to_dict("records")):
        s = json.loads((run_dir / "results" / "summary.json").read_text())
        assert row["bagnet_test_acc"] == s["bagnet33"]["test"]["acc"]
        assert row["resnet50_test_acc"] == s["resnet50"]["test"]["acc"]
    hist = [pd.read_csv(d / "results" / "bagnet33_history.csv")["train_loss"] for d in (base, seed1)]
    assert not hist[0].equals(hist[1])
    # the reference run's write-up now holds the study: summary, claim (a), REPORT.md, notebook 05's record
    summary = json.loads((base / "results" / "summary.json").read_text())
    assert [r["seed"] for r in summary["seeds"]["rows"]] == [0, 1]
    assert "over 2 training seeds" in summary["verdicts"][0]["evidence"]
    c = [v for v in summary["verdicts"] if v["claim"].startswith("(c)")]  # (c) gives its verdict over the seeds too
    assert all(set(map(int, v["numbers"]["seed_changes"])) == {0, 1} and v["numbers"]["seed_verdict"] for v in c)
    assert len(c) == 2
    assert "over the 2 training seeds: **" in (base / "REPORT.md").read_text()
    assert "### How much is luck? 2 training seeds" in (base / "REPORT.md").read_text()
    assert read_records(base / "notebooks" / NOTEBOOKS[-1])["seeds"] == [0, 1]
    assert (base / "results" / "timings.json").read_bytes() == (src / "results" / "timings.json").read_bytes()


def test_a_seed_study_needs_a_finished_run(tmp_path, capsys):
    from bagnet_lib.cli import main

    assert main(["seeds", "--run-dir", str(tmp_path / "nothing"), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds no finished run" in err and "make reproduce" in err and "Traceback" not in err
    assert not (tmp_path / "nothing-seed1").exists()


def test_published_notebooks_keep_figures_drop_widgets_and_machine_paths_and_stay_small(tmp_path, monkeypatch):
    from bagnet_lib.course import published_notebooks as pub
    from bagnet_lib.course import runner

    monkeypatch.setattr(runner, "publish_networks", lambda run_dir, res: res / "networks")  # no networks here
    from bagnet_lib.course.runner import publish
    from bagnet_lib.errors import UserError
    from bagnet_lib.io import PROJECT_ROOT

    run = PROJECT_ROOT / "runs" / f"publish-test-{tmp_path.name}"  # a run inside the repository, as `make reproduce` makes
    data = tmp_path / "elsewhere" / "flowers"
    monkeypatch.delenv("BAGNET_DATA", raising=False)
    try:
        (run / "notebooks").mkdir(parents=True)
        (run / "results").mkdir()
        (run / "figures").mkdir()
        (run / "run.json").write_text(json.dumps({"profile": {"name": "cpu"}, "synthetic": False,
                                                 "data_dir": str(data), "manifest": None}))
        (run / "REPORT.md").write_text("# r\n")
        (run / "results" / "summary.json").write_text("{}")
        nb = nbformat.v4.new_notebook()
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": 1}}}
        nb.metadata["papermill"] = {"input_path": str(PROJECT_ROOT / "notebooks" / NOTEBOOKS[0]),
                                    "parameters": {"RUN_DIR": str(run), "DATA_DIR": str(data)}}
        cell = nbformat.v4.new_code_cell(f'RUN_DIR = "{run}"\nDATA_DIR = "{data}"')
        cell.outputs = [
            nbformat.v4.new_output("stream", name="stderr", text=f"{Path.home()}/.cache/x.py:1: warning\n"),
            nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "m"},
                                                         "text/plain": "HBox(children=(...))"}),
            nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
            nbformat.v4.new_output("stream", name="stdout", text=f"wrote {run}/results/summary.json\n"),
        ]
        nb.cells = [cell]
        for name in NOTEBOOKS:
            nbformat.write(nb, run / "notebooks" / name)
        repo = tmp_path / "repo"
        publish(run, repo)
        out = repo / "results" / "cpu" / "notebooks"
        assert sorted(p.name for p in out.iterdir()) == sorted(NOTEBOOKS)
        text = (out / NOTEBOOKS[0]).read_text()
        for machine in (str(run), str(data), str(PROJECT_ROOT), str(Path.home()), "/tmp/"):
            assert machine not in text
        published = nbformat.reads(text, as_version=4)
        outputs = published.cells[0].outputs
        assert "widgets" not in published.metadata and len(outputs) == 3
        assert outputs[1]["data"]["image/png"] == "iVBORw0KGgo="  # the figure stays, embedded
        assert f"wrote runs/{run.name}/results/summary.json" in outputs[2]["text"]
        assert f'RUN_DIR = "runs/{run.name}"' in published.cells[0].source and "<flowers>" in published.cells[0].source
        monkeypatch.setattr(pub, "MAX_BYTES", 100)
        with pytest.raises(UserError, match=r"01_data_exploration.ipynb is .* MB once cleaned"):
            publish(run, repo)
        assert (out / NOTEBOOKS[0]).read_text() == text  # refused: the published notebooks are left as they were
    finally:
        import shutil

        shutil.rmtree(run, ignore_errors=True)
