"""The course as run, readable without running it: a run's executed notebooks, cleaned for publication.

`publish` (course/runner.py) calls `publish_notebooks` for the reference run: RUN_DIR/notebooks/0N_*.ipynb →
results/<profile>/notebooks/, each one

- with its outputs, figures as the PNGs the kernel embedded (a code host renders them);
- without widget state or widget views (the explorer of notebook 04, progress bars): they need a live kernel,
  and a view's plain-text fallback ("HBox(children=…)") says nothing to a reader;
- without this machine's paths: the run directory, the data, the repository and the home folder are written as
  the project writes them everywhere else (`io.display_path`: `runs/cpu`, `../shared/data/flowers`,
  `$BAGNET_DATA`), in the sources, the outputs and papermill's metadata;
- under `MAX_BYTES` (5 MB): a larger one is refused with its size, so that a change that bloats a notebook is
  noticed at publication, not by a reader's browser.

The numbers in them are the run's own: these are the notebooks that produced results/<profile>/.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bagnet_lib.errors import UserError
from bagnet_lib.io import PROJECT_ROOT, display_path, write_text

MAX_BYTES = 5 * 1024 * 1024
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def path_replacements(run_dir: Path, data_dir: Path | None, manifest: str | Path | None) -> dict[str, str]:
    """Absolute paths of this machine → how they are published, longest first (a run directory inside the
    repository is replaced before the repository itself)."""
    places = {Path(run_dir).resolve(): None, PROJECT_ROOT.resolve(): ".", Path.home().resolve(): "~"}
    if data_dir:
        places[Path(data_dir).resolve()] = None
    if manifest:
        places[Path(manifest).resolve()] = None
    if os.environ.get("BAGNET_DATA"):
        places[Path(os.environ["BAGNET_DATA"]).resolve()] = None
    out = {str(p): shown if shown is not None else display_path(p) for p, shown in places.items() if str(p) != "/"}
    return dict(sorted(out.items(), key=lambda kv: -len(kv[0])))


def _scrub(value, replacements: dict[str, str]):
    """`value` (a notebook's JSON: strings, lists, dicts) with every machine path replaced."""
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_scrub(v, replacements) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, replacements) for k, v in value.items()}
    return value


def clean_notebook(nb: dict, replacements: dict[str, str]) -> dict:
    """An executed notebook (nbformat JSON) without widget state or views and without this machine's paths."""
    nb = json.loads(json.dumps(nb))
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        cell["outputs"] = [o for o in cell.get("outputs", []) if WIDGET_MIME not in o.get("data", {})]
    return _scrub(nb, replacements)


def publish_notebooks(sources: list[Path], dest: Path, replacements: dict[str, str]) -> list[Path]:
    """Clean each executed notebook of `sources` into `dest` (replacing what was there); return the written paths.
    Refuses, with nothing written, when one is over `MAX_BYTES` once cleaned."""
    cleaned = {}
    for src in sources:
        text = json.dumps(clean_notebook(json.loads(Path(src).read_text()), replacements), indent=1,
                          ensure_ascii=False) + "\n"
        size = len(text.encode())
        if size > MAX_BYTES:
            raise UserError(f"The executed notebook {src} is {size / 2**20:.1f} MB once cleaned, over the "
                            f"{MAX_BYTES / 2**20:.0f} MB a published notebook may take. Show fewer or smaller figures "
                            "in it (each one is embedded as a PNG), then publish again.")
        cleaned[Path(src).name] = text
    for old in dest.glob("*.ipynb"):  # the published run replaces the last one's notebooks
        if old.name not in cleaned:
            old.unlink()
    return [write_text(dest / name, text) for name, text in sorted(cleaned.items())]
