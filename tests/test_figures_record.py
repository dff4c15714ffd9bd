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
