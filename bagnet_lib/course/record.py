"""Values a notebook records for its tests, the way microsoft/computervision-recipes uses scrapbook's `glue`.

`record(acc=0.81, n_configurations=4321)` displays the values under a MIME type of their own: Jupyter shows
nothing for it, papermill keeps it in the executed notebook, and `read_records(path)` reads every recorded
value back, so the tests assert on what the notebook computed, not only on the files it wrote.
"""
from __future__ import annotations

import json
from pathlib import Path

MIME = "application/vnd.bagnet-blackout.record+json"


def record(**values) -> None:
    """Record JSON-able values (numpy and torch scalars become floats) in this notebook's outputs."""
    from IPython.display import display

    plain = json.loads(json.dumps(values, default=lambda v: v.item() if hasattr(v, "item") else float(v)))
    display({MIME: plain}, raw=True)


def read_records(notebook: str | Path) -> dict:
    """Every value an executed notebook recorded (later cells win)."""
    import nbformat

    out: dict = {}
    for cell in nbformat.read(Path(notebook), as_version=4).cells:
        for output in cell.get("outputs", []):
            out.update(output.get("data", {}).get(MIME, {}))
    return out
