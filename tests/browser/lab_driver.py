"""A real JupyterLab server and the few things a student does in it, for the browser tests.

- `start_lab_server` / `stop_lab_server`: JupyterLab from this virtualenv on 127.0.0.1 with a
  random free port and a random token, serving a temporary copy of `notebooks/` whose outputs and
  saved widget state are removed (every widget on screen must come from the live kernel, and the
  committed notebooks are never touched), beside links to the rest of the repository.
- `LabPage`: open a notebook, Run -> Run All Cells, focus a slider; and the checks made on what
  the page shows (error outputs, cells that never ran, a missing widget front end).

Used by tests/browser/conftest.py (fixtures) and tests/browser/test_jupyterlab.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
ARTIFACTS = REPO / "artifacts" / "browser"  # git-ignored
DOCS_IMAGES = REPO / "docs" / "images"
CHROMIUM = os.environ.get("EFFNET_CHROMIUM", "/usr/bin/chromium")
# Headless Chromium in a container: no sandbox (root), no GPU, nothing fetched in the background.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1400, "height": 1000}
SERVER_START_TIMEOUT_S = 120
PAGE_TIMEOUT_MS = 60_000  # one slow click or page load on a busy 2-core machine

# JupyterLab user settings for the test profile (a temporary JUPYTERLAB_SETTINGS_DIR): no
# "get notified about official Jupyter news?" toast, and every cell kept in the DOM (the default
# windowing skips or detaches cells outside the viewport).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}

# The notebook on screen (other panels, if any, are hidden tabs).
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
# An exception as JupyterLab shows it: error outputs and stderr share the stderr MIME type.
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
ERROR_PATTERN = re.compile(r"Traceback|\b\w*(Error|Exception)\b:")
# An exception in a kernel message: an error reply or output, or a traceback on stderr.
KERNEL_ERROR = re.compile(
    r'"msg_type":\s*"error"|Traceback \(most recent call last\)|'
    r"Exception in comm_msg"
)
EXCEPTION_NAME = re.compile(
    r'"ename":\s*"(?P<ename>[^"]*)",\s*'
    r'"evalue":\s*(?P<evalue>"(?:[^"\\]|\\.)*")'
)
# What the notebook shows instead of a widget when the ipywidgets front end is missing or broken.
WIDGET_FAILURES = (
    "Loading widget...",
    "Error displaying widget",
    "Failed to load model class",
    "Error rendering output item",
)
WIDGET_REPR = re.compile(
    r"\b(?:VBox|HBox|Box|interactive)\(children=|"
    r"\b(?:Float|Int)(?:Log)?Slider\(value=|\bOutput\(\)"
)


def missing_requirement() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return (
            f"Playwright for Python is not installed in {sys.prefix}; `make test` installs "
            "it, or run `.venv/bin/python -m pip install -e '.[browser]'`"
        )
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (
            f"no Chromium at {CHROMIUM}; `make test` installs Debian's `chromium` package "
            "when it may use apt (root or sudo), or set EFFNET_CHROMIUM to a Chromium binary"
        )
    return None


# ------------------------------------------------------------------------------------- server


@dataclass
class LabServer:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path  # the temporary copy of notebooks/ that the server serves
    log: Path  # the server's (and its kernels') stdout and stderr
    process: subprocess.Popen

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_notebooks(target: Path) -> None:
    """Copy notebooks/ to `target`, without outputs, execution counts or saved widget state."""
    shutil.copytree(NOTEBOOKS, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for path in target.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        notebook.metadata.pop("widgets", None)  # else JupyterLab draws static widgets from it
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
        nbformat.write(notebook, path)


def write_lab_settings(settings_dir: Path) -> None:
    for plugin, values in LAB_SETTINGS.items():
        package, name = plugin.rsplit("/", 1)
        path = settings_dir / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))


def mirror_repository(base: Path) -> Path:
    """`base` laid out like the repository: a stripped copy of notebooks/, links to the rest.

    Notebooks find the package, results/ and data relative to their folder (for example by
    walking up to the folder that holds effnet_edu/), so the copy keeps that layout.
    """
    base.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name not in {"notebooks", ".git", ARTIFACTS.relative_to(REPO).parts[0]}:
            (base / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    copy_notebooks(base / "notebooks")
    return base / "notebooks"


def start_lab_server(base: Path, log: Path) -> LabServer:
    """Start JupyterLab on a mirror of the repository under `base`; wait until it answers."""
    root = mirror_repository(base / "repo")
    write_lab_settings(base / "settings")
    port, token = _free_port(), secrets.token_hex(24)
    env = dict(
        os.environ,
        JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        JUPYTER_CONFIG_DIR=str(base / "config"),  # no user configuration leaks in
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
    )
    env.setdefault("OMP_NUM_THREADS", "1")  # the kernel shares the machine with the browser
    env.setdefault("TQDM_DISABLE", "1")
    env.pop("MPLBACKEND", None)  # the kernel must use the inline backend, as for a student
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        # a safety net should the test process die before it stops the server:
        "--MappingKernelManager.cull_idle_timeout=900",
        "--MappingKernelManager.cull_interval=60",
        "--ServerApp.shutdown_no_activity_timeout=1200",
    ]
    if hasattr(os, "getuid") and os.getuid() == 0:
        command.append("--allow-root")  # JupyterLab refuses to run as root without it (CI)
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LabServer(
        url=f"http://127.0.0.1:{port}", token=token, root=root, log=log, process=process
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited with code {process.returncode} while "
                f"starting; its log ({log}):\n{server.log_text()[-4000:]}"
            )
        try:
            server.api("/api/status")
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                stop_lab_server(server)
                raise RuntimeError(
                    f"JupyterLab did not answer on {server.url} within "
                    f"{SERVER_START_TIMEOUT_S} s; its log:\n"
                    f"{server.log_text()[-4000:]}"
                ) from None
            time.sleep(0.5)


def stop_lab_server(server: LabServer) -> None:
    """Shut down the kernels and the server; escalate to SIGTERM, then SIGKILL."""
    if server.process.poll() is not None:
        return
    try:
        server.api("/api/shutdown", method="POST")  # stops every kernel, then the server
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        pass
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


# --------------------------------------------------------------------------------- the page


class LabPage:
    """What a student does in JupyterLab, and the checks on what the page then shows."""

    def __init__(self, page, server: LabServer, artifacts: Path, prefix: str):
        self.page, self.server, self.artifacts, self.prefix = page, server, artifacts, prefix
        self.page_errors: list[str] = []  # uncaught JavaScript errors, for failure reports
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        # Exceptions the kernel reports, read from its websocket: one raised by a widget callback
        # belongs to no cell, so JupyterLab shows it in no cell (only in its log console).
        self.kernel_errors: list[str] = []
        page.on("websocket", self._watch_kernel_channel)
        self.notebook: str | None = None
        self.log_start = 0  # the server's log is shared: read only what this page caused

    def _watch_kernel_channel(self, websocket) -> None:
        if "/api/kernels/" in websocket.url:
            websocket.on("framereceived", self._on_kernel_frame)

    def _on_kernel_frame(self, payload) -> None:
        text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        if KERNEL_ERROR.search(text):
            found = EXCEPTION_NAME.search(text)
            self.kernel_errors.append(
                f"{found['ename']}: {json.loads(found['evalue'])}" if found else text[-2000:]
            )

    @property
    def expect(self):
        from playwright.sync_api import expect

        return expect

    # -------------------------------------------------------------------------------- actions
    def open(self, notebook: str) -> None:
        """Open a notebook (a path under the server's root) and wait until its kernel is idle."""
        self.notebook = notebook
        self.log_start = len(self.server.log_text())
        self.kernel_errors.clear()
        # A workspace of its own, reset: no tab (and no kernel) restored from an earlier test.
        self.page.goto(
            f"{self.server.url}/lab/workspaces/{self.prefix}/tree/{notebook}"
            f"?reset&token={self.server.token}",
            wait_until="domcontentloaded",
        )
        self.page.locator(f"{PANEL} .jp-Notebook .jp-Cell").first.wait_for()
        # JupyterLab starts the notebook's kernel (python3) by itself, but sometimes asks first
        # ("Select Kernel", the preferred kernel preselected): accept, as a student would.
        deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
        while not self._kernel_started():
            dialog = self.page.locator(".jp-Dialog", has_text="Select Kernel")
            if dialog.count() and dialog.first.is_visible():
                dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
            assert time.monotonic() < deadline, f"no kernel started for {notebook}"
            time.sleep(0.5)
        self.wait_for_kernel_idle()

    def _kernel_started(self) -> bool:
        sessions = self.server.api("/api/sessions") or []
        return any(
            s.get("path", "").endswith(self.notebook)
            and s.get("kernel")
            and s["kernel"].get("execution_state") == "idle"
            for s in sessions
        )

    def wait_for_kernel_idle(self, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
        # The kernel status circle in the notebook's toolbar.
        self.page.locator(f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
            timeout=timeout_ms
        )

    def run_all(self, timeout_s: float) -> float:
        """Run -> Run All Cells, then wait until no cell is queued or running; return seconds."""
        start = time.monotonic()
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        self.page.locator(
            ".lm-Menu-item:visible", has_text=re.compile(r"^Run All Cells")
        ).first.click()
        # Prompts read "[ ]:" before (outputs were stripped), "[*]:" while queued or running and
        # "[n]:" once run; a cell that raises stops the run and resets the queued ones to "[ ]:".
        self.page.wait_for_function(
            """panel => {
                const prompts = [...document.querySelectorAll(
                    panel + ' .jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
                return prompts.some(p => /\\d/.test(p)) && !prompts.some(p => p.includes('*'));
            }""",
            arg=PANEL,
            timeout=timeout_s * 1000,
            polling=500,
        )
        self.wait_for_kernel_idle()
        return time.monotonic() - start

    def hide_sidebar(self) -> None:
        """Collapse the file browser, so that screenshots show the notebook at full width."""
        current = self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
        if current.count():
            current.first.click()

    def close_notebook(self) -> None:
        """Shut down this notebook's kernel (the server is shared by the whole session)."""
        if self.notebook is None:
            return
        try:
            for session in self.server.api("/api/sessions") or []:
                if session.get("path", "").endswith(self.notebook):
                    self.server.api(f"/api/sessions/{session['id']}", method="DELETE")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass

    def screenshot(self, name: str, locator=None, full_page: bool = False) -> Path:
        path = self.artifacts / f"{self.prefix}-{name}.png"
        try:
            if locator is None:
                self.page.screenshot(path=str(path), full_page=full_page, animations="disabled")
            else:
                locator.screenshot(path=str(path), animations="disabled")
        except Exception as error:  # a screenshot must never hide the real failure
            print(f"screenshot {path} failed: {error}")
        return path

    # --------------------------------------------------------------------------------- checks
    def unexecuted_cells(self) -> list[int]:
        """Indices (among code cells, from 0) of the cells that show no execution count."""
        texts = self.page.locator(f"{PANEL} .jp-CodeCell .jp-InputPrompt").all_text_contents()
        return [i for i, text in enumerate(texts) if not re.search(r"\d", text)]

    def error_outputs(self) -> list[str]:
        """Texts of every output that shows an exception, in cells and in widget outputs."""
        texts = self.page.locator(f"{PANEL} {STDERR}").all_inner_texts()
        return [text for text in texts if ERROR_PATTERN.search(text)]

    def widget_problems(self, settle_s: float = 30) -> list[str]:
        """Signs, in the outputs, that the widget front end is missing or broken."""
        outputs = self.page.locator(f"{PANEL} .jp-OutputArea-output")
        deadline = time.monotonic() + settle_s  # "Loading widget..." may still settle
        while (
            "Loading widget..." in "\n".join(outputs.all_inner_texts())
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        text = "\n".join(outputs.all_inner_texts())
        problems = [f"an output shows {marker!r}" for marker in WIDGET_FAILURES if marker in text]
        reprs = sorted(set(WIDGET_REPR.findall(text)))
        if reprs:  # JupyterLab without the ipywidgets extension falls back to the text repr
            problems.append(f"outputs show widget text reprs instead of widgets: {reprs}")
        return problems

    def assert_clean_run(self) -> None:
        """Every code cell ran, none shows an error, every widget rendered, no callback raised."""
        errors = self.error_outputs()
        assert not errors, "cells show errors:\n" + "\n---\n".join(e[-3000:] for e in errors)
        unexecuted = self.unexecuted_cells()
        assert not unexecuted, f"code cells never ran (index among code cells): {unexecuted}"
        problems = self.widget_problems()
        assert not problems, "; ".join(problems)
        # An exception raised by a widget callback outside an Output context is shown in no cell:
        # the kernel sends it with no cell to go to (JupyterLab puts it in its log console) ...
        assert not self.kernel_errors, (
            f"the kernel reported exceptions that no cell shows: {sorted(set(self.kernel_errors))}"
        )
        # ... or, with other kernel versions, writes it to its own log, held by the server's.
        logged = re.findall(r"Exception in comm_msg.*", self.server.log_text()[self.log_start :])
        assert not logged, (
            f"a widget callback raised in the kernel (see {self.server.log}): {logged}"
        )

    def sliders(self, label: str):
        """The rendered sliders (ipywidgets 8, noUiSlider) whose description is `label`, in order.

        The description is matched exactly: a readout such as "Lite1 · φ ≈ 0.44" does not make a
        slider a φ slider.
        """
        description = self.page.locator(
            ".widget-label", has_text=re.compile(f"^{re.escape(label)}$")
        )
        return self.page.locator(f"{PANEL} .widget-slider", has=description)

    def phi_sliders(self):
        """The rendered sliders labelled φ (`PhiExplorer`), in notebook order."""
        return self.sliders("φ")

    def cell_with(self, slider):
        """The code cell whose output holds `slider`."""
        index = slider.evaluate(
            """(element, panel) => [...document.querySelectorAll(
            panel + ' .jp-CodeCell')].findIndex(cell => cell.contains(element))""",
            PANEL,
        )
        assert index >= 0, "the slider is in no code cell of the notebook on screen"
        return self.page.locator(f"{PANEL} .jp-CodeCell").nth(index)

    def slider_value(self, slider) -> str:
        return slider.locator(".widget-readout").inner_text().strip()


def save_docs_screenshot(source: Path, name: str) -> Path | None:
    """Copy an artefact to docs/images/NAME when it is missing there, or on request.

    Rewriting the README's pictures on every run would change tracked files each time; set
    EFFNET_UPDATE_SCREENSHOTS=1 to refresh them.
    """
    target = DOCS_IMAGES / name
    if not source.exists():
        return None
    if target.exists() and os.environ.get("EFFNET_UPDATE_SCREENSHOTS") != "1":
        return None
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
