"""Run the course headless: notebooks 01 → 05 through papermill, one run directory, one line per notebook.

`python -m bagnet_lib reproduce --profile P [--run-dir D] [--data-dir D]` (and `make reproduce`) call
`reproduce`. Executed notebooks go to RUN_DIR/notebooks/, figures to RUN_DIR/figures/, numbers to
RUN_DIR/results/, the report to RUN_DIR/REPORT.md. The first failing notebook stops the run with its
name and failing cell; its executed copy (with the traceback) is kept.

`publish` copies a finished run into the repository's `figures/<profile>/` and `results/<profile>/`, its executed
notebooks, cleaned, into `results/<profile>/notebooks/` (`published_notebooks`), and REPORT.md at the top level
for the `cpu` profile; smoke runs and synthetic-data runs are never
published, so they cannot overwrite the committed reference results.

`seed_study` (`python -m bagnet_lib seeds`, `make seeds`) runs the same course with more training seeds beside a
finished run and adds their table to its write-up.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bagnet_lib.course.pipeline import SYNTHETIC_BANNER, choose_data
from bagnet_lib.course.published_notebooks import path_replacements, publish_notebooks
from bagnet_lib.course.reference import publish_networks
from bagnet_lib.errors import UserError
from bagnet_lib.io import PROJECT_ROOT, write_json, write_text
from bagnet_lib.writeup.readme import update_readme
from bagnet_lib.writeup.seeds import finished_seeds, seed_run_dir, write_seeds

if TYPE_CHECKING:
    import pandas as pd

REPO = PROJECT_ROOT
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ("01_data_exploration.ipynb", "02_train_resnet50.ipynb", "03_train_bagnet.ipynb",
             "04_blackout_experiments.ipynb", "05_writeup.ipynb")
OPTIONAL_NOTEBOOKS = ("06_imagenet_blackout.ipynb",)  # runs only where there is ImageNet; not in the course


class NotebookFailed(UserError):
    """A notebook raised; the message names it, the cell and the error, and where the executed copy is."""


def _declared(name: str, parameters: dict, notebook_dir: Path) -> dict:
    """The subset of `parameters` that notebook `name` declares, with INTERACTIVE=False (headless)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook_dir / name))
    return {k: v for k, v in {**parameters, "INTERACTIVE": False}.items() if k in declared}


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def already_done(name: str, run_dir: Path, parameters: dict, notebook_dir: Path = NOTEBOOK_DIR) -> bool:
    """True when RUN_DIR/notebooks/<name> ran to the end, without an error, with these parameters and this code."""
    import nbformat

    out = run_dir / "notebooks" / name
    if not out.is_file():
        return False
    try:
        nb = nbformat.read(out, as_version=4)
        if _code(nb) != _code(nbformat.read(notebook_dir / name, as_version=4)):
            return False  # the notebook was edited since it ran
    except Exception:  # a half-written or foreign file is simply run again
        return False
    meta = nb.metadata.get("papermill", {})
    cells_done = all(c.metadata.get("papermill", {}).get("status") == "completed" for c in nb.cells
                     if c.cell_type == "code")
    return (meta.get("parameters") == _declared(name, parameters, notebook_dir) and meta.get("exception") is not True
            and cells_done)


def run_notebook(name: str, run_dir: Path, parameters: dict, timeout: int = 4 * 3600,
                 notebook_dir: Path = NOTEBOOK_DIR) -> float:
    """Execute one notebook with papermill into RUN_DIR/notebooks/; return its wall time in seconds.

    Only the parameters the notebook declares are passed; `INTERACTIVE=False` tells notebook 04 not to
    build ipywidgets (there is no frontend, and widget messages are what a headless client least needs).
    `timeout` bounds each cell.
    """
    import papermill as pm

    out = run_dir / "notebooks" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    parameters = _declared(name, parameters, notebook_dir)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(notebook_dir / name), str(out), parameters=parameters, kernel_name="python3",
                            cwd=str(notebook_dir), execution_timeout=timeout, progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as exc:
        raise NotebookFailed(f"Notebook {name} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}). "
                             f"The executed notebook with the traceback is {out}; fix the cause and run the same "
                             "command again (finished training is resumed, not repeated).") from exc
    return time.perf_counter() - t0


def course_parameters(profile: str, run_dir: Path, data_dir: str | Path | None, manifest: str | Path | None,
                      seed: int, bagnet: str = "bagnet33", nproc: int | None = None) -> dict:
    """The parameters every notebook of one run receives (each takes the ones it declares): the shared five
    (`PROFILE`, `RUN_DIR`, `DATA_DIR`, `MANIFEST`, `SEED`), `BAGNET` (03 trains it, 04 and 05 study it) and, when
    set, `NPROC` (02 and 03 train with torchrun on that many processes; docs/distributed.md)."""
    params = {"PROFILE": profile, "RUN_DIR": str(run_dir),
              "DATA_DIR": str(Path(data_dir).resolve()) if data_dir else None,
              "MANIFEST": str(Path(manifest).resolve()) if manifest else None, "SEED": seed, "BAGNET": bagnet}
    return {**params, "NPROC": int(nproc)} if nproc else params


def reproduce(profile: str = "cpu", run_dir: str | Path | None = None, data_dir: str | Path | None = None,
              manifest: str | Path | None = None, seed: int = 0, notebooks: tuple[str, ...] = NOTEBOOKS,
              extra_parameters: dict | None = None, publish_to: str | Path | None = None,
              cell_timeout: int = 4 * 3600, resume: bool = False,
              notebook_dir: str | Path = NOTEBOOK_DIR, bagnet: str = "bagnet33",
              nproc: int | None = None) -> dict[str, float]:
    """Execute the notebooks in order with the same parameters; print one line per notebook with its time.

    With `resume`, a notebook whose executed copy in RUN_DIR/notebooks finished without error for the
    same parameters and the same code is skipped; once one notebook runs, every later one runs too (it reads their outputs).
    `bagnet` is the course's `BAGNET` (bagnet9, bagnet17, bagnet33): notebook 03 trains it, 04 and 05 study it.
    `nproc` is the course's `NPROC`: notebooks 02 and 03 train through `torchrun --nproc_per_node=<nproc>` (None:
    in the notebook's own process); everything else runs in the notebooks as always.
    """
    notebook_dir = Path(notebook_dir)
    run_dir = Path(run_dir or f"runs/{profile}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    meta_path = run_dir / "run.json"
    if meta_path.is_file():  # an existing run keeps its data
        meta = json.loads(meta_path.read_text())
        data_dir, synthetic = meta["data_dir"], meta["synthetic"]
    else:  # decide once, up front, so a synthetic fallback is announced before anything runs
        data_dir, synthetic = choose_data(data_dir)
    if synthetic:
        print(SYNTHETIC_BANNER, flush=True)
    params = {**course_parameters(profile, run_dir, data_dir, manifest, seed, bagnet, nproc), **(extra_parameters or {})}
    timings_path = run_dir / "results" / "timings.json"
    previous = json.loads(timings_path.read_text()) if resume and timings_path.is_file() else {}
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    for name in notebooks:
        if resume and already_done(name, run_dir, params, notebook_dir):
            timings[name] = previous.get(name, 0.0)
            print(f"[reproduce] {name} skipped (--resume: already ran with these parameters)", flush=True)
            continue
        resume = False  # everything after a notebook that runs must run too
        print(f"[reproduce] {name} …", flush=True)
        timings[name] = run_notebook(name, run_dir, params, timeout=cell_timeout, notebook_dir=notebook_dir)
        write_json(timings_path, timings)
        print(f"[reproduce] {name} done in {timings[name]:.1f} s", flush=True)
    total = time.perf_counter() - t_all
    print(f"[reproduce] all notebooks done in {total / 60:.1f} min; report: {run_dir / 'REPORT.md'}")
    if synthetic:
        print(SYNTHETIC_BANNER)
    if publish_to is not None:
        publish(run_dir, publish_to)
    return timings


def seed_study(run_dir: str | Path, seeds: list[int], publish_to: str | Path | None = None,
               cell_timeout: int = 4 * 3600, notebook_dir: str | Path = NOTEBOOK_DIR, gather: bool = False,
               data_dir: str | Path | None = None, nproc: int | None = None) -> pd.DataFrame:
    """The seed study of a finished run: more training seeds of the same course, its seed table, its write-up again.

    For each seed in `seeds` other than the run's own, the whole course runs in `seeds.seed_run_dir(run_dir, seed)`
    (`runs/cpu-seed1`, …) with the run's profile, data, split and BagNet; it resumes like `reproduce --resume`
    (finished notebooks are skipped, training restarts after its last complete epoch), so the study can run in
    pieces. Then RUN_DIR/results/seeds.csv is written and notebook 05 runs again in RUN_DIR, so that summary.json
    and REPORT.md include the table (and claim (a) cites it). Returns the table.

    Seeds are independent courses, so they can run on different machines (docs/distributed.md): `make seeds
    SEEDS=1` on one and `SEEDS=2` on another (each with a copy of the finished run), then the seed directories
    copied beside the run and `gather=True` (`make seeds-gather`): no course runs, the table takes every finished
    `<run_dir>-seed*` beside the run. `data_dir` replaces the run's own data path (the data lives elsewhere on
    this machine); `nproc` trains each seed with torchrun (`reproduce`'s).
    """
    run_dir, notebook_dir = Path(run_dir).resolve(), Path(notebook_dir)
    meta_path, summary_path = run_dir / "run.json", run_dir / "results" / "summary.json"
    if not (meta_path.is_file() and summary_path.is_file()):
        raise UserError(f"{run_dir} holds no finished run ({meta_path.name} or results/{summary_path.name} is missing): "
                        "a seed study adds seeds to a finished course. Run `make reproduce` (or `python -m bagnet_lib "
                        f"reproduce --run-dir {run_dir}`) first, then the seed study with the same run directory.")
    meta = json.loads(meta_path.read_text())
    profile, manifest = meta["profile"]["name"], meta.get("manifest")
    data_dir = data_dir or meta["data_dir"]
    bagnet = json.loads(summary_path.read_text())["bagnet"]
    if gather:
        others = [s for s in finished_seeds(run_dir) if s != meta["seed"]]
        print(f"[seeds] gathering the finished seeds beside {run_dir.name}: {others or 'none'}", flush=True)
    else:
        others = [s for s in dict.fromkeys(seeds) if s != meta["seed"]]
        if not Path(data_dir).is_dir():
            raise UserError(f"The run's data {data_dir} is not on this machine. Pass the dataset's folder here with "
                            "--data-dir (the same images: the seed runs read the split from them).")
        for seed in others:
            print(f"[seeds] training seed {seed} of the {profile} course in {seed_run_dir(run_dir, seed)}", flush=True)
            reproduce(profile, seed_run_dir(run_dir, seed), data_dir, manifest, seed, cell_timeout=cell_timeout,
                      resume=True, notebook_dir=notebook_dir, bagnet=bagnet, nproc=nproc)
    table = write_seeds(run_dir, [seed_run_dir(run_dir, s) for s in others])
    print(f"[seeds] {len(table)} seeds in {run_dir / 'results' / 'seeds.csv'}; the write-up again, with the table", flush=True)
    # timings.json keeps the course's own times (the seed table's course_minutes read it): this rerun is not timed
    run_notebook(NOTEBOOKS[-1], run_dir, course_parameters(profile, run_dir, meta["data_dir"], manifest, meta["seed"],
                                                           bagnet), timeout=cell_timeout, notebook_dir=notebook_dir)
    if publish_to is not None:
        publish(run_dir, publish_to)
    return table


def publish(run_dir: str | Path, repo: str | Path = REPO) -> Path | None:
    """Copy a finished real-data run into repo/figures/<profile>/ and repo/results/<profile>/ (its executed
    notebooks into results/<profile>/notebooks/, the networks it evaluated into results/<profile>/networks/ with
    their manifest: `course.reference.publish_networks`).

    Refuses smoke and synthetic runs (they would overwrite the committed reference results).
    """
    run_dir, repo = Path(run_dir), Path(repo)
    meta = json.loads((run_dir / "run.json").read_text())
    profile = meta["profile"]["name"]
    if profile == "smoke" or meta.get("synthetic"):
        print(f"[publish] not publishing a {'synthetic-data' if meta.get('synthetic') else 'smoke'} run: "
              "the committed figures/ and results/ stay as they are")
        return None
    figs, res = repo / "figures" / profile, repo / "results" / profile
    # the notebooks first: one too large is refused before anything of the earlier publication is replaced
    executed = [run_dir / "notebooks" / name for name in NOTEBOOKS if (run_dir / "notebooks" / name).is_file()]
    publish_notebooks(executed, res / "notebooks", path_replacements(run_dir, meta.get("data_dir"), meta.get("manifest")))
    for src, dst, pattern in ((run_dir / "figures", figs, "*.png"), (run_dir / "results", res, "*")):
        dst.mkdir(parents=True, exist_ok=True)
        new = {f.name for f in src.glob(pattern) if f.is_file()}
        for old in dst.glob(pattern):  # the published run is replaced, not merged: no file of an older run stays
            if old.is_file() and old.name not in new | {"REPORT.md"}:
                old.unlink()
        for name in sorted(new):
            shutil.copy2(src / name, dst / name)
    shipped = publish_networks(run_dir, res)
    print(f"[publish] shipped the evaluated networks, their split and manifest in {shipped}")
    report = (run_dir / "REPORT.md").read_text().replace("](figures/", f"](figures/{profile}/")
    write_text(res / "REPORT.md", report.replace(f"](figures/{profile}/", f"](../../figures/{profile}/"))
    if profile == "cpu":  # the reference run: top-level REPORT.md and the README's results and docs/performance.md's timings
        write_text(repo / "REPORT.md", report)
        summary = json.loads((run_dir / "results" / "summary.json").read_text())
        timings_path = run_dir / "results" / "timings.json"  # the runner's own file: the one writer of the times
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else None
        if (repo / "README.md").is_file() and update_readme(repo / "README.md", summary, timings):
            print(f"[publish] updated the results ({repo / 'README.md'}) and the timings (docs/performance.md)")
    print(f"[publish] copied figures to {figs} and results to {res}")
    return res
