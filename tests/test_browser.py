"""The blackout explorer as a user meets it: notebook 04 run in a real JupyterLab, in headless Chromium.

Headless tests of `BlackoutExplorer.update` cannot show that the widgets render and respond in
JupyterLab ("Error displaying widget: model not found", a mismatched `jupyterlab_widgets`, a figure
that never redraws). This test starts JupyterLab from this environment on a free loopback port with a
token, opens a copy of notebook 04 pointed at a freshly made smoke run, runs it through the "Run" menu,
then changes the pattern, the drop fraction and the seed, and checks after each change that the
explorer's text and figure changed, that no widget failed to display and that the kernel raised
nothing. Screenshots go to `<run>/browser/`; the server is stopped whatever happens.

Needs Debian's `chromium` on PATH and `playwright` (PyPI; its own browser download is not used).
Without them the test skips and says which is missing. `make test-browser` runs it;
`BAGNET_EXPLORER_FIGURE=figures/explorer_jupyterlab.png BAGNET_EXPLORER_RUN_DIR=runs/cpu make test-browser` also
refreshes the README's screenshot, from a copy of the finished cpu run (its real networks and patch grid) instead of
a smoke run.
"""
from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from bagnet_lib.course.reference import lay_out_reference
from bagnet_lib.course.runner import NOTEBOOK_DIR, NOTEBOOKS, reproduce
from tests.conftest import PAPER_SPLIT, ROOT, shared_flowers

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # then the test skips, saying so (chromium_or_skip)
    PlaywrightTimeout = TimeoutError

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK = "04_blackout_experiments.ipynb"
COPY_NAME = "04_explorer_in_browser.ipynb"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
WIDGET_ERROR = "Error displaying widget"
TRACEBACK = "Traceback (most recent call last)"
RUN_ALL_TIMEOUT_S = 300  # deadlines of polls, not speed tests: a run takes ~20 s idle, a redraw ~1 s
CHANGE_TIMEOUT_S = 60


# ---------------------------------------------------------------------------------------- set-up helpers
def chromium_or_skip() -> str:
    """Path of Debian's `chromium`, or skip naming what is missing and how to get it."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed in this environment (pip install -r requirements.txt)")
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("no `chromium` on PATH (Debian: apt-get install -y chromium; .ci/run does this); "
                    "Playwright's own browser download is not used")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook_copy(dest_dir: Path, run_dir: Path, data_dir: Path, manifest: Path | None, profile: str = "smoke",
                  seed: int = 0) -> Path:
    """Write notebook 04 into `dest_dir` with a cell after its parameters cell that points it at `run_dir`.

    The committed notebook is not touched; the injected cell is what papermill would inject, with
    `INTERACTIVE = True` so the explorer cell builds the widget.
    """
    nb = nbformat.read(NOTEBOOK_DIR / NOTEBOOK, as_version=4)
    where = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    values = {"PROFILE": profile, "RUN_DIR": str(run_dir), "DATA_DIR": str(data_dir),
              "MANIFEST": str(manifest) if manifest else None, "SEED": seed, "INTERACTIVE": True}
    source = "# injected by tests/test_browser.py\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(where + 1, cell)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / COPY_NAME
    nbformat.write(nb, path)
    return path


def _lab_settings(settings_dir: Path) -> None:
    """User settings for a fresh JupyterLab: every cell in the DOM, no news or update pop-ups."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
    }
    for rel, content in files.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


@dataclass
class LabServer:
    """A JupyterLab server this test started: its URL, token, process and log file."""

    url: str
    token: str
    process: subprocess.Popen
    log: Path
    runtime_dir: Path  # where the kernels' connection files are

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def exceptions(self) -> str:
        """The first traceback in the server's log, or ''."""
        log = self.log_text()
        return log[max(0, log.find(TRACEBACK) - 300):][:3000] if TRACEBACK in log else ""

    def request(self, path: str, method: str = "GET") -> int:
        return self._call(path, method)[0]

    def get_json(self, path: str):
        return json.loads(self._call(path, "GET")[1])

    def _call(self, path: str, method: str) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()


def start_lab(root: Path, state_dir: Path, timeout_s: float = 90) -> LabServer:
    """Start `jupyter lab` from this environment on a free loopback port; return once /api/status answers."""
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update({
        "JUPYTER_CONFIG_DIR": str(state_dir / "config"),
        "JUPYTER_RUNTIME_DIR": str(state_dir / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(state_dir / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state_dir / "workspaces"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("BAGNET_MANIFEST", None)
    _lab_settings(state_dir / "settings")
    log = state_dir / "jupyter_lab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:  # CI containers run as root; the server refuses that unless told
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, proc, log, state_dir / "runtime")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode} before answering; "
                               f"log ({log}):\n{server.log_text()[-3000:]}")
        try:
            if server.request("/api/status") == 200:
                return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # poll interval: the verdict is "answered before the deadline", not a timing
    stop_lab(server)
    raise RuntimeError(f"jupyter lab did not answer on {server.url} within {timeout_s:.0f} s; "
                       f"log ({log}):\n{server.log_text()[-3000:]}")


def stop_lab(server: LabServer) -> None:
    """Ask the server to shut down (it stops its kernels), then make sure its process group is gone."""
    try:
        server.request("/api/shutdown", method="POST")
    except (urllib.error.URLError, OSError):
        pass
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.process.pid, sig)  # the server and anything it left in its session
        except ProcessLookupError:
            break
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(timeout=10)


class KernelWatch:
    """Listens to the notebook kernel's IOPub channel for errors.

    An exception in a widget callback never reaches a cell's output (the comm message that ran it
    belongs to no cell) nor the server's log; the kernel reports it on IOPub, as an `error` message or
    a traceback on stderr. JupyterLab shows nothing, so the test listens there.
    """

    def __init__(self, server: LabServer):
        from jupyter_client import BlockingKernelClient

        kernels = server.get_json("/api/kernels")
        assert len(kernels) == 1, f"expected the notebook's one kernel, the server runs {len(kernels)}"
        connection = server.runtime_dir / f"kernel-{kernels[0]['id']}.json"
        self.client = BlockingKernelClient(connection_file=str(connection))
        self.client.load_connection_file()
        self.client.start_channels(shell=False, iopub=True, stdin=False, hb=False, control=False)
        self.errors: list[str] = []

    def drain(self) -> list[str]:
        """Read what the kernel published so far; return every error seen since the watch started."""
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                return self.errors
            kind, content = msg["msg_type"], msg["content"]
            if kind == "error":
                text = "\n".join(content["traceback"]) or f"{content['ename']}: {content['evalue']}"
                self.errors.append(_no_ansi(text))
            elif kind == "stream" and content.get("name") == "stderr" and TRACEBACK in content.get("text", ""):
                self.errors.append(_no_ansi(content["text"]))

    def report(self) -> str:
        """'' when the kernel raised nothing, else the first error for a failure message."""
        errors = self.drain()
        if not errors:
            return ""
        last = [line for line in errors[0].splitlines() if line.strip()][-1]
        return f"\nthe kernel raised {last!r} ({len(errors)} error(s)); the first, ending:\n{errors[0][-1500:]}"

    def close(self) -> None:
        self.client.stop_channels()


def _no_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


@pytest.fixture(scope="module")
def explorer_run(chromium, tmp_path_factory, synthetic_root) -> tuple[Path, Path, Path | None, str, int]:
    """The run directory notebook 04 reads, with notebooks 01-03 done (split, checkpoints): with
    BAGNET_EXPLORER_RUN_DIR, a copy of that finished run (for the README's screenshot); else, where the repository
    ships the `cpu` networks and the flowers are here, the reference run laid out from them (what a user explores:
    the 24×24 grid, a couple of minutes for notebook 04); else a fresh smoke run (4×4 grid). The copy leaves the
    original untouched. Returns (run, data, manifest, profile, seed)."""
    given = os.environ.get("BAGNET_EXPLORER_RUN_DIR")
    if given:
        src = Path(given).resolve()
        if not (src / "run.json").is_file() or not (src / "checkpoints").is_dir():
            pytest.fail(f"BAGNET_EXPLORER_RUN_DIR={given} holds no finished run (no run.json or checkpoints/): point it "
                        "at a run directory made by `make reproduce` (e.g. runs/cpu), or unset it for a smoke run.")
        run_dir = tmp_path_factory.mktemp("browser") / src.name
        shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("notebooks", "browser"))
        meta = json.loads((run_dir / "run.json").read_text())
        manifest = Path(meta["manifest"]) if meta.get("manifest") else None
        return run_dir, Path(meta["data_dir"]), manifest, meta["profile"]["name"], int(meta["seed"])
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    data = shared_flowers()
    shipped = ROOT / "results" / "cpu" / "networks" / "networks.json"
    if data is not None and shipped.is_file():  # what a user sees: the shipped networks on the 24×24 grid
        run = lay_out_reference(run_dir, ROOT / "results" / "cpu", data.resolve(), progress=False)
        meta = json.loads((run_dir / "run.json").read_text())
        return run_dir, run.data_dir, Path(meta["manifest"]) if meta.get("manifest") else None, "cpu", run.seed
    manifest = PAPER_SPLIT if data is not None and PAPER_SPLIT.is_file() else None
    data = (data or synthetic_root).resolve()  # absolute: JupyterLab runs the notebook from elsewhere
    reproduce("smoke", run_dir, data, manifest, seed=0, notebooks=NOTEBOOKS[:3], cell_timeout=600)
    return run_dir, data, manifest, "smoke", 0


@pytest.fixture(scope="module")
def lab(explorer_run, tmp_path_factory) -> Iterator[tuple[LabServer, Path]]:
    run_dir, data, manifest, profile, seed = explorer_run
    root = tmp_path_factory.mktemp("lab_root")
    notebook_copy(root, run_dir, data, manifest, profile, seed)
    server = start_lab(root, tmp_path_factory.mktemp("lab_state"))
    try:
        yield server, run_dir
    finally:
        stop_lab(server)


# ---------------------------------------------------------------------------------------- in the browser
class Explorer:
    """The explorer widget in the page, located by its control labels, and what it currently shows."""

    def __init__(self, page, shots: Path, kernel: KernelWatch):
        self.page = page
        self.shots = shots
        self.kernel = kernel
        self.box = page.locator(".jp-OutputArea-output .widget-vbox").filter(has_text="drop fraction").first
        self.text = self.box.locator(".widget-html-content").first
        self.figure = self.box.locator(".widget-output").first

    def wait_rendered(self) -> None:
        """Wait for the explorer's controls and figure; fail naming what the cell shows instead."""
        rendered = self.box.or_(self.page.locator(".jp-OutputArea-output", has_text=WIDGET_ERROR)).first
        try:
            rendered.wait_for(timeout=CHANGE_TIMEOUT_S * 1000)
            self.figure.locator("img").first.wait_for(timeout=CHANGE_TIMEOUT_S * 1000)
        except PlaywrightTimeout as exc:  # say what the user would see
            cell = self.page.locator(".jp-CodeCell", has_text="explorer.widget()").first
            raise AssertionError(f"the explorer widget did not render within {CHANGE_TIMEOUT_S} s; "
                                 f"its cell shows:\n{cell.inner_text()[-1500:]}") from exc
        self.box.scroll_into_view_if_needed()

    def control(self, css: str, label: str):
        return self.box.locator(css).filter(has=self.page.locator("label", has_text=label)).first

    def shown(self) -> tuple[str, bytes]:
        """The explorer's text line and a screenshot of its figure (PNG bytes)."""
        text = self.text.inner_text()
        if "error in the explorer:" in text:  # the explorer caught an exception in its update
            raise AssertionError(f"the explorer shows {text!r}{self.kernel.report()}")
        self.figure.locator("img").first.wait_for(state="visible", timeout=CHANGE_TIMEOUT_S * 1000)
        return text, self.figure.screenshot(animations="disabled")

    def wait_for_change(self, before: tuple[str, bytes], what: str, shot: str) -> tuple[str, bytes]:
        """Wait until both the text and the figure differ from `before`; save the widget's screenshot."""
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        now = self.shown()
        while time.monotonic() < deadline and (now[0] == before[0] or now[1] == before[1]):
            time.sleep(0.25)  # poll until both changed; the assertions below test the change, not its speed
            now = self.shown()
        while time.monotonic() < deadline:  # settle: several key presses make several redraws
            time.sleep(0.5)  # poll until two looks agree; a short settle only changes the screenshot, not a verdict
            again = self.shown()
            if again == now:
                break
            now = again
        self.box.screenshot(path=str(self.shots / f"{shot}.png"), animations="disabled")
        kernel = self.kernel.report()
        assert now[0] != before[0], (f"after {what}, the explorer's text did not change within "
                                     f"{CHANGE_TIMEOUT_S} s: still {before[0]!r}{kernel}")
        assert now[1] != before[1], (f"after {what}, the explorer's figure did not redraw within "
                                     f"{CHANGE_TIMEOUT_S} s (identical screenshot; text now {now[0]!r}){kernel}")
        return now


PROMPTS_JS = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                      .map(p => p.textContent.trim())"""


def click_run_all(page) -> None:
    """Run → Run All Cells, once the menu item is enabled."""
    item = page.locator(".lm-Menu-item[data-command='runmenu:run-all']")
    deadline = time.monotonic() + 60
    while True:
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        item.wait_for(state="visible", timeout=10_000)
        if "lm-mod-disabled" not in (item.get_attribute("class") or ""):
            break
        page.keyboard.press("Escape")
        assert time.monotonic() < deadline, "Run → Run All Cells stayed disabled for 60 s (no kernel?)"
        time.sleep(1)  # poll interval until the menu item is enabled (a condition, not a duration)
    assert item.inner_text().startswith("Run All Cells"), item.inner_text()
    item.click()


def run_all_cells(page) -> list[str]:
    """Run All Cells, then wait until every code cell has an execution count or one cell failed.

    JupyterLab drops a run requested before the notebook's session has its kernel (the prompts stay
    `[ ]`), as it would for a user clicking too early; then it is clicked again, as a user would.
    """
    page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=60_000)  # status bar: kernel ready
    for _ in range(3):
        click_run_all(page)
        try:
            page.wait_for_function(f"() => ({PROMPTS_JS})().some(t => t !== '[ ]:')", timeout=15_000,
                                   polling=250)
            break
        except PlaywrightTimeout:
            print("[browser] Run All Cells did not start (no kernel yet?); clicking it again")
    try:
        page.wait_for_function(
            f"""() => {{
                const done = ({PROMPTS_JS})().every(t => /^\\[\\d+\\]:$/.test(t));
                const failed = [...document.querySelectorAll('.jp-OutputArea-output')]
                    .some(o => o.textContent.includes({TRACEBACK!r}));
                return done || failed;
            }}""", timeout=RUN_ALL_TIMEOUT_S * 1000, polling=500)
    except PlaywrightTimeout:
        raise AssertionError(f"Run All Cells did not finish within {RUN_ALL_TIMEOUT_S} s; "
                             f"prompts: {page.evaluate(PROMPTS_JS)}") from None
    return page.evaluate(PROMPTS_JS)


def assert_no_errors(page, server: LabServer, when: str, kernel: KernelWatch | None = None) -> None:
    """No widget failed to display, no cell output holds a traceback, the kernel and server raised nothing."""
    text = page.locator(".jp-Notebook").inner_text()
    assert WIDGET_ERROR not in text, f"{when}: JupyterLab shows {text[text.index(WIDGET_ERROR):][:200]!r}"
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                          has_text=TRACEBACK)
    assert errors.count() == 0, f"{when}: a cell raised:\n{errors.first.inner_text()[-2000:]}"
    line = page.locator(".jp-OutputArea-output .widget-html-content", has_text="error:")
    assert line.count() == 0, f"{when}: the explorer reports {line.first.inner_text()!r}"
    logged = server.exceptions()
    assert not logged, f"{when}: the server's log holds an exception:\n{logged}"
    if kernel is not None:
        raised = kernel.report()
        assert not raised, f"{when}: {raised.strip()}"


def test_explorer_renders_and_responds_in_jupyterlab(chromium, lab, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    server, run_dir = lab
    shots = run_dir / "browser"
    shots.mkdir(exist_ok=True)
    console: list[str] = []
    kernel: KernelWatch | None = None
    t0 = time.monotonic()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 1000})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(f"{server.url}/lab/tree/{COPY_NAME}?token={server.token}")
            page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=60_000)
            prompts = run_all_cells(page)
            page.screenshot(path=str(shots / "00_notebook_after_run_all.png"))
            assert_no_errors(page, server, "after Run All Cells")
            assert all(p[1:-2].isdigit() for p in prompts), f"Run All Cells left cells unrun: {prompts}"

            kernel = KernelWatch(server)  # from here on, errors in widget callbacks are caught
            ex = Explorer(page, shots, kernel)
            ex.wait_rendered()
            start = ex.shown()
            ex.box.screenshot(path=str(shots / "01_explorer_start.png"), animations="disabled")
            assert "checkerboard" in start[0], start[0]

            pattern = ex.control(".widget-dropdown", "pattern").locator("select")
            pattern.select_option(label="random")
            after_pattern = ex.wait_for_change(start, "choosing pattern 'random'", "02_pattern_random")
            assert "random seed 0" in after_pattern[0], after_pattern[0]

            drop = ex.control(".widget-slider", "drop fraction")
            readout = drop.locator(".widget-readout")
            assert readout.inner_text().strip() == "0.50"
            drop.locator(".noUi-handle").first.focus()
            for _ in range(6):  # 0.50 → 0.80, one step (0.05) per key, as a user would
                page.keyboard.press("ArrowRight")
            page.wait_for_function("(el) => el.textContent.trim() === '0.80'", arg=readout.element_handle(),
                                   timeout=10_000)
            after_drop = ex.wait_for_change(after_pattern, "moving the drop-fraction slider 0.50 → 0.80",
                                            "03_drop_0.80")

            seed = ex.control(".widget-slider", "seed")
            seed.locator(".noUi-handle").first.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function("(el) => el.textContent.trim() === '1'",
                                   arg=seed.locator(".widget-readout").element_handle(), timeout=10_000)
            after_seed = ex.wait_for_change(after_drop, "changing the seed 0 → 1", "04_seed_1")
            assert "random seed 1" in after_seed[0], after_seed[0]

            assert_no_errors(page, server, "after moving the explorer's controls", kernel)
            figure = os.environ.get("BAGNET_EXPLORER_FIGURE")
            if figure:
                shutil.copyfile(shots / "03_drop_0.80.png", figure)
                print(f"\n[browser] {figure} shows: {after_drop[0]}")
        finally:
            (shots / "console.log").write_text("\n".join(console))
            if kernel is not None:
                kernel.close()
            context.close()
    print(f"\n[browser] explorer checked in {time.monotonic() - t0:.0f} s; screenshots in {shots}")
    widget_errors = [m for m in console if WIDGET_ERROR in m or "model not found" in m.lower()]
    assert not widget_errors, f"the browser console reports widget errors: {widget_errors[:5]}"
