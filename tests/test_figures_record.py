"""The figure registry, the values notebooks record, and which BagNet a run studies."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from bagnet_lib.course.record import MIME, read_records
from bagnet_lib.errors import UserError
from bagnet_lib.figures import registry
from bagnet_lib.nets.profiles import get_profile
from bagnet_lib.nets.run import Run

LIB = Path(__file__).resolve().parents[1] / "bagnet_lib"


def test_registry_names_captions_and_order_for_any_bagnet():
    names = registry.expected("bagnet9")
    assert "03_bagnet9_history.png" in names and "03_bagnet33_history.png" not in names
    assert registry.caption("03_bagnet9_confusion.png") == "BagNet-9 confusion matrix on the test split."
    assert registry.order("01_split_counts.png") < registry.order("03_bagnet17_history.png") < registry.order(
        "04_frontier.png")
    assert registry.expected("bagnet33", "12") == [n for n in registry.expected("bagnet33") if n[:2] in ("01", "02")]
    assert not registry.registered("my_own_plot.png") and not registry.registered("03_resnet50_history.png")
    with pytest.raises(KeyError, match="registry"):
        registry.figure_path("/tmp", "04_typo.png")


def test_every_figure_name_the_views_save_is_registered():
    source = (LIB / "course" / "views.py").read_text()
    literal = re.findall(r'_out\(run, f?"([^"]+\.png)"\)', source)
    assert len(literal) >= 15
    for name in literal:
        filled = name.replace("{model_name}", "bagnet33").replace("{_nb(model_name)}", "03")
        assert registry.registered(filled), name


def test_read_records_collects_every_recorded_value_later_cells_win(tmp_path):
    out = lambda values: nbformat.v4.new_output("display_data", data={MIME: values})  # noqa: E731
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a"), nbformat.v4.new_code_cell("b")])
    nb.cells[0].outputs = [out({"acc": 0.5, "grid": [4, 4]}), nbformat.v4.new_output("stream", text="hi")]
    nb.cells[1].outputs = [out({"acc": 0.75})]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    assert read_records(tmp_path / "nb.ipynb") == {"acc": 0.75, "grid": [4, 4]}


def _run(tmp_path, trained: list[str]) -> Run:
    (tmp_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in trained:
        (tmp_path / "checkpoints" / f"{name}_best.pt").write_bytes(b"")
    return Run(tmp_path, get_profile("smoke"), tmp_path, True, 0, pd.DataFrame(), ["a", "b"])


def test_the_run_studies_the_bagnet_notebook_03_trained(tmp_path):
    assert _run(tmp_path / "one", ["resnet50", "bagnet17"]).bagnet() == "bagnet17"
    with pytest.raises(UserError, match="No trained BagNet .* run notebook 03 first"):
        _run(tmp_path / "none", ["resnet50"]).bagnet()
    both = _run(tmp_path / "two", ["bagnet17", "bagnet33"])
    with pytest.raises(UserError, match=r"several trained BagNets \(bagnet17, bagnet33\); set BAGNET"):
        both.bagnet()
    assert both.bagnet("bagnet33") == "bagnet33" and both.trained("bagnet") == ["bagnet17", "bagnet33"]
    with pytest.raises(UserError, match="not a BagNet"):
        both.bagnet("resnet50")


def _curve_frame() -> pd.DataFrame:
    """A drop curve with known numbers: accuracy 0.8 with all kept, 0.8 − frac/2 for every mask after; `zero`'s loss
    grows faster than `mean`'s."""
    rows = []
    for frac in (0.0, 0.25, 0.5, 0.75, 0.95):
        for seed in range(4):
            for agg, loss in (("mean", 0.5 + frac * 0.1), ("zero", 0.5 + frac)):
                rows.append({"kind": "random", "drop_frac": frac, "seed": seed, "aggregation": agg,
                             "acc": 0.8 - frac / 2, "loss": loss, "model": "bagnet33"})
    return pd.DataFrame(rows)


def test_the_drop_curve_shows_changes_and_the_papers_points_as_changes_from_its_own_all_kept_accuracy():
    from bagnet_lib.figures import plots
    from bagnet_lib.writeup.paper import PAPER_POINTS, PAPER_POINTS_LABEL, PAPER_TABLE1, paper_changes

    changes = paper_changes()
    base = PAPER_TABLE1["bagnet33"]["test"]
    assert sorted(changes) == [0.25, 0.5, 0.75] == sorted(PAPER_POINTS)
    for f, (acc, loss) in PAPER_POINTS.items():
        assert changes[f] == pytest.approx((acc - base["acc"], loss - base["loss"]))
    fig = plots.plot_drop_curve(_curve_frame(), None, changes, paper_label=PAPER_POINTS_LABEL)
    acc_ax, loss_ax = fig.axes[:2]
    mean_line = next(line for line in acc_ax.get_lines() if line.get_label().startswith("mean"))
    assert mean_line.get_ydata().tolist() == pytest.approx([0.0, -0.125, -0.25, -0.375, -0.475])  # change from 0.8
    cross = next(line for line in acc_ax.get_lines() if line.get_label() == PAPER_POINTS_LABEL)
    assert cross.get_xdata().tolist() == [25, 50, 75]
    assert cross.get_ydata().tolist() == pytest.approx([changes[f][0] for f in (0.25, 0.5, 0.75)])
    loss_cross = next(line for line in loss_ax.get_lines() if line.get_label() == PAPER_POINTS_LABEL)
    assert loss_cross.get_ydata().tolist() == pytest.approx([changes[f][1] for f in (0.25, 0.5, 0.75)])
    assert "change" in acc_ax.get_ylabel() and PAPER_POINTS_LABEL in [t.get_text() for t in acc_ax.get_legend().texts]


def test_the_sentences_under_the_figures_carry_the_runs_numbers():
    from bagnet_lib.figures import plots

    curve = _curve_frame()
    s = plots.describe_drop_curve(curve, {0.25: (0.001, 0.0)})
    assert "0.800" in s and "0.675 at 25 % dropped" in s and "change -0.125, the paper's +0.001" in s
    assert "0.325 at 95 % dropped" in s and "`zero`'s cross-entropy is 1.450 against `mean`'s 0.595" in s
    paper = curve[curve["drop_frac"].isin([0.25, 0.75])]
    s = plots.describe_mask_accuracy(paper)
    assert "4 masks' accuracies have mean 0.675" in s and "largest difference 0" in s and "1.250 under `zero`" in s
    structured = pd.concat([curve, curve.assign(kind="center", acc=curve["acc"] - 0.1)])
    assert "0.550 (random), 0.450 (keep centre)" in plots.describe_structured(structured)
    aggs = pd.concat([curve, curve.assign(aggregation="max", acc=0.1), curve.assign(aggregation="median", acc=0.7)])
    s = plots.describe_aggregations(aggs)
    assert "`median` (0.700)" in s and "`max` (0.100)" in s and "0.550 for `mean`" in s
    kinds = pd.concat([curve, curve.assign(kind="pixel", aggregation="model", model="resnet50", acc=0.3)])
    s = plots.describe_blackout_kinds(kinds, {"bagnet33": 0.8, "resnet50": 0.9}, "bagnet33", {0.5: (-0.05, 0.1)})
    assert "-0.250 for BagNet-33 patch logits dropped (4 masks)" in s and "-0.600 for ResNet-50 image tiles" in s
    assert "-0.050 for the paper's" in s


def test_a_wrong_prediction_is_said_to_lose_cross_entropy_under_zero():
    import torch

    from bagnet_lib.figures import plots

    wrong = {"all kept": torch.tensor([3.0, 0.0]), "mean": torch.tensor([3.0, 0.0]), "zero": torch.tensor([1.5, 0.0])}
    s = plots.describe_mechanism(wrong, 1, ["a", "b"], 8, 16, 7)
    assert "Test image 7 (true class b)" in s and "(wrong)" in s and "cross-entropy is lower, 1.701 against 3.049" in s
    right = plots.describe_mechanism(wrong, 0, ["a", "b"], 8, 16, 7)
    assert "(right)" in right and "is higher" in right and "which is the true one" in right


def test_every_figure_of_notebook_04_but_the_explorer_has_a_finding():
    from bagnet_lib.course import views

    fours = [n for n in registry.expected("bagnet33", "4")]
    assert sorted(views.FINDINGS) == sorted(n for n in fours if n != "04_explorer.png")
    notebook = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "04_blackout_experiments.ipynb", 4)
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    for name in views.FINDINGS:  # the notebook prints each one under its figure
        assert f'views.finding(run, "{name}"' in code, name


def test_blackout_kinds_draws_bands_that_exclude_their_mean():
    """The reference run of issue 37 failed here: equal accuracies minus the baseline average to a hair below their
    band, and `errorbar` refuses negative error lengths. A skewed set of masks puts the mean outside its 95 % band
    honestly; the bars must still span exactly that band."""
    from bagnet_lib.figures import plots
    from bagnet_lib.nets.metrics import spread

    rows = []
    for frac in (0.25, 0.5, 0.75):
        accs = [0.1 + 0.2] * 7 if frac == 0.25 else [0.7] * 99 + [0.0]  # 0.25: rounding; 0.5/0.75: skewed
        rows += [{"kind": "random", "model": "bagnet33", "aggregation": "mean", "drop_frac": frac, "acc": a,
                  "experiment": "paper"} for a in accs]
    runs = pd.DataFrame(rows)
    skewed = [0.7] * 99 + [0.0]
    assert sum(skewed) / len(skewed) < spread(skewed)[0]  # the case errorbar cannot draw
    fig = plots.plot_blackout_kinds(runs, None, baselines={"bagnet33": 0.1})
    ax = fig.axes[0]
    (segments,) = [c.get_segments() for c in ax.collections if len(c.get_segments()) == 3]
    lo, hi = spread([a - 0.1 for a in skewed])
    assert [s[:, 1].min() for s in segments][1:] == pytest.approx([lo, lo]) and segments[1][:, 1].max() == pytest.approx(hi)
    mean_line = next(line for line in ax.get_lines() if line.get_label().startswith("BagNet"))
    assert mean_line.get_ydata()[1] == pytest.approx(sum(skewed) / len(skewed) - 0.1)
