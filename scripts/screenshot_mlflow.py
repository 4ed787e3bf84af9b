"""Screenshots of the MLflow UI for the README and the docs: the search trials compared, or the
champion model's page with its test metrics.

    python scripts/screenshot_mlflow.py                                  # ./mlflow.db, to docs/img/
    python scripts/screenshot_mlflow.py --page champion                  # the @champion model's page
    python scripts/screenshot_mlflow.py --out shot.png --charts loss     # the loss charts instead
    python scripts/screenshot_mlflow.py --store other/mlflow.db --out shot.png
    python scripts/screenshot_mlflow.py --server http://127.0.0.1:5000   # an MLflow server already running

Given a store (a SQLite file), it serves a copy of it with ``mlflow server`` on a free port of
127.0.0.1, so the store itself is only read. Headless Chromium, driven over the DevTools protocol,
opens the experiment's runs in chart view, filtered to the trials of the newest search run, hides
their parent run, widens the run list so the trial names show in full, and keeps the charts whose
metric name contains ``--charts`` (default ``valid``: valid_acc per epoch, valid_acc_best,
valid_loss per epoch). ``--page champion`` opens instead the logged model that the registered
model's ``@champion`` alias points at, whose page lists the test metrics evaluate linked to it.
Needs ``chromium`` on PATH (Debian package chromium) and the project's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-address=127.0.0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float, log: Path | None = None) -> None:
    """Wait until ``url`` answers 200; fail early when ``proc`` exits, late after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.is_file() else ""
            raise RuntimeError(f"{' '.join(map(str, proc.args[:3]))} exited ({proc.returncode}) before {url} "
                               f"answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """End a process started with ``start_new_session=True`` and everything it started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@contextlib.contextmanager
def mlflow_server(store: Path, artifacts: Path, log: Path, timeout_s: float = 180) -> Iterator[str]:
    """``mlflow server`` on a free port of 127.0.0.1 for a SQLite ``store``; yields its URL."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(artifacts)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc, timeout_s, log)
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def served_copy(store: Path) -> Iterator[str]:
    """Serve a copy of a SQLite store (read through SQLite, so a store in use is copied whole)."""
    if not store.is_file():
        raise SystemExit(f"error: {store}: no MLflow store; run the pipeline (dvc repro) or pass --store")
    with tempfile.TemporaryDirectory(prefix="mlflow-shot-") as tmp:
        copy = Path(tmp) / "mlflow.db"
        source = sqlite3.connect(f"file:{store.resolve()}?mode=ro", uri=True)
        target = sqlite3.connect(copy)
        with contextlib.closing(source), contextlib.closing(target):
            source.backup(target)
        with mlflow_server(copy, Path(tmp) / "mlartifacts", Path(tmp) / "server.log") as url:
            yield url


class Browser:
    """Headless Chromium on a fresh profile, driven over the DevTools protocol (``async with``)."""

    def __init__(self, width: int = 1600, height: int = 900, timeout_s: float = 90):
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self._ids = 0

    async def __aenter__(self) -> "Browser":
        import aiohttp

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            raise RuntimeError("chromium not found on PATH (Debian: apt-get install chromium)")
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        port = free_port()
        self._proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={self._profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/json/version", self._proc, 60)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                page = next(t for t in json.load(response) if t["type"] == "page")
            self._session = aiohttp.ClientSession()
            self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
            await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                            deviceScaleFactor=1, mobile=False)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        if getattr(self, "_ws", None) is not None:
            await self._ws.close()
        if getattr(self, "_session", None) is not None:
            await self._session.close()
        stop(self._proc)
        shutil.rmtree(self._profile, ignore_errors=True)

    async def call(self, method: str, **params) -> dict:
        self._ids += 1
        ident = self._ids
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:  # skip events until the answer to this call
            msg = await asyncio.wait_for(self._ws.receive_json(), self.timeout_s)
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout_s: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the page did not show {what} within {timeout_s or self.timeout_s:.0f} s")

    async def wait_for_stable(self, expression: str, what: str, polls: int = 4) -> Any:
        """Wait until ``expression`` is truthy and the same for ``polls`` polls in a row (0.5 s apart)."""
        deadline = time.monotonic() + self.timeout_s
        last, same = None, 0
        while time.monotonic() < deadline:
            value = await self.js(expression)
            same = same + 1 if value and value == last else 0
            if same >= polls:
                return value
            last = value
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the page did not settle on {what} within {self.timeout_s:.0f} s")

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def text(self) -> str:
        return await self.js("document.body ? document.body.innerText : ''")

    async def wait_for_text(self, needles: list[str], timeout_s: float | None = None) -> str:
        """The page's text, runs of white space made one space, once it holds every one of ``needles``."""
        needles = [" ".join(n.split()) for n in needles]
        check = f"(() => {{ const t = (document.body ? document.body.innerText : '').replace(/\\s+/g, ' '); " \
                f"return {json.dumps(needles)}.every(n => t.includes(n)) ? t : null; }})()"
        return await self.wait_for(check, ", ".join(needles), timeout_s)

    async def click(self, selector: str) -> None:
        if not await self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                             f"if (e) e.click(); return !!e; }})()"):
            raise RuntimeError(f"nothing on the page matches {selector}")

    async def drag(self, selector: str, dx: float, dy: float) -> None:
        """Drag the middle of the first element matching ``selector`` with the mouse."""
        box = await self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                            f"if (!e) return null; const r = e.getBoundingClientRect(); "
                            f"return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        if not box:
            raise RuntimeError(f"nothing on the page matches {selector}")
        x, y = box
        mouse = "Input.dispatchMouseEvent"
        await self.call(mouse, type="mouseMoved", x=x, y=y)
        await self.call(mouse, type="mousePressed", x=x, y=y, button="left", buttons=1, clickCount=1)
        for k in range(1, 11):
            await self.call(mouse, type="mouseMoved", x=x + dx * k / 10, y=y + dy * k / 10, button="left", buttons=1)
        await self.call(mouse, type="mouseReleased", x=x + dx, y=y + dy, button="left", clickCount=1)

    async def type_into(self, selector: str, text: str) -> None:
        await self.click(selector)
        await self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.call("Input.insertText", text=text)

    async def screenshot(self, path: Path) -> None:
        await self.call("Input.dispatchMouseEvent", type="mouseMoved", x=self.width - 2, y=self.height - 2)
        await asyncio.sleep(0.5)  # let hover effects fade
        shot = await self.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(base64.b64decode(shot["data"]))
        os.replace(tmp, path)


def search_trials(server: str, experiment: str) -> tuple[str, str, list[str]]:
    """Experiment id, the newest search run's id and its trials' names."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} at {server}")
    searches = client.search_runs([exp.experiment_id], "tags.`fmnist.stage` = 'search'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    if not searches:
        raise SystemExit(f"error: experiment {experiment!r} has no search run")
    parent = searches[0].info.run_id
    trials = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return exp.experiment_id, parent, sorted(r.info.run_name for r in trials)


def experiment_url(server: str, experiment_id: str, **query: str) -> str:
    return f"{server}/#/experiments/{experiment_id}/runs?" + urllib.parse.urlencode(
        {"workflowType": "machine_learning", **query}, quote_via=urllib.parse.quote)


# Selectors of MLflow 3's experiment page (checked on 3.17).
EXPAND = "button[data-component-id*=runnamecellrenderer]"  # the +/- beside a parent run's name
CLOSE_ASSISTANT = "button[data-component-id='mlflow.assistant.chat_panel.close']"
RUN_LIST_RESIZER = "div[handleaxis='e']"
CHART_SEARCH = "input[placeholder='Search metric charts']"
PLOTS = ".js-plotly-plot"
METRIC_SEARCH = "input[placeholder='Search metrics']"  # the logged-model page's metrics table


async def trials_chart_view(browser: Browser, server: str, experiment_id: str, parent: str, trials: list[str],
                            charts: str) -> str:
    """Open the chart view of ``parent``'s trials; the page's text once the charts are drawn."""
    await browser.open(experiment_url(server, experiment_id, compareRunsMode="CHART",
                                      searchFilter=f"tags.mlflow.parentRunId = '{parent}'"))
    await browser.wait_for(f"!!document.querySelector({json.dumps(EXPAND)})", "the search run")
    await browser.js(f"document.querySelector({json.dumps(CLOSE_ASSISTANT)})?.click()")  # a side panel
    await browser.click(EXPAND)
    await browser.wait_for_text(trials)
    # The parent's eye toggle: hide it, so the charts compare the trials only.
    hidden = await browser.js(f"""(() => {{ const row = document.querySelector({json.dumps(EXPAND)}).closest('.ag-row');
        const toggle = [...row.querySelectorAll('label')].find(l => l.textContent.includes('Hide run'));
        if (toggle) toggle.click(); return !!toggle; }})()""")
    if not hidden:
        raise RuntimeError("no 'Hide run' toggle on the search run's row")
    await browser.drag(RUN_LIST_RESIZER, 150, 0)
    if charts:
        await browser.type_into(CHART_SEARCH, charts)
    await browser.wait_for_stable(f"document.querySelectorAll({json.dumps(PLOTS)}).length", "the charts")
    await browser.js("""(() => { const s = document.createElement('style');
        s.textContent = '.modebar-container { display: none !important; }'; document.head.appendChild(s); })()""")
    await browser.js("document.activeElement?.blur()")  # no text cursor in the chart search box
    await asyncio.sleep(2)  # the charts' transitions
    return await browser.text()


def champion_model(server: str, registered: str) -> tuple[str, str]:
    """Experiment id and logged-model id of the version ``@champion`` of ``registered``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    try:
        version = client.get_model_version_by_alias(registered, "champion")
    except MlflowException:
        raise SystemExit(f"error: registered model {registered!r} has no @champion at {server}") from None
    model_id = getattr(version, "model_id", None) or version.source.removeprefix("models:/")
    return client.get_logged_model(model_id).experiment_id, model_id


async def champion_page(browser: Browser, server: str, experiment_id: str, model_id: str) -> str:
    """Open the champion's logged-model page; its text once the metrics show."""
    await browser.open(f"{server}/#/experiments/{experiment_id}/models/{model_id}")
    await browser.wait_for_text(["test_accuracy", "test_macro_f1"])
    await browser.js(f"document.querySelector({json.dumps(CLOSE_ASSISTANT)})?.click()")
    await browser.type_into(METRIC_SEARCH, "test_")  # the test metrics, with the dataset they were measured on
    await browser.js("document.activeElement?.blur()")
    await asyncio.sleep(2)
    return await browser.text()


async def take(server: str, experiment: str, out: Path, charts: str, width: int, height: int,
               page: str = "trials", registered: str = "fashion-mnist-alexnet") -> list[str]:
    """Take the screenshot; what it shows: the trials' names, or the champion's model id."""
    if page == "champion":
        experiment_id, model_id = champion_model(server, registered)
        shown = [model_id]
    else:
        experiment_id, parent, shown = search_trials(server, experiment)
        if not shown:
            raise SystemExit(f"error: the newest search run {parent} has no trial runs")
    async with Browser(width, height) as browser:
        try:
            if page == "champion":
                await champion_page(browser, server, experiment_id, model_id)
            else:
                await trials_chart_view(browser, server, experiment_id, parent, shown, charts)
        except Exception:
            failed = out.with_name(out.stem + ".failed.png")
            with contextlib.suppress(Exception):  # the first error is the one to see
                await browser.screenshot(failed)
                print(f"the page as it was: {failed}", file=sys.stderr)
            raise
        await browser.screenshot(out)
    return shown


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--store", type=Path, default=Path("mlflow.db"), help="SQLite store (default: %(default)s)")
    source.add_argument("--server", help="URL of a running MLflow server instead")
    p.add_argument("--page", choices=("trials", "champion"), default="trials",
                   help="the search trials' charts, or the @champion model's page (default: %(default)s)")
    p.add_argument("--experiment", default="fashion-mnist-alexnet", help="(default: %(default)s)")
    p.add_argument("--registered-model", default="fashion-mnist-alexnet", help="(default: %(default)s)")
    p.add_argument("--out", type=Path, help="(default: docs/img/mlflow-search-trials.png, or "
                                            "docs/img/mlflow-champion-model.png for --page champion)")
    p.add_argument("--charts", default="valid", help="show the charts whose name contains this; '' = all "
                                                     "(default: %(default)s)")
    p.add_argument("--size", default="1600x720", help="viewport WIDTHxHEIGHT in pixels (default: %(default)s)")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with contextlib.ExitStack() as stack:
        server = args.server.rstrip("/") if args.server else stack.enter_context(served_copy(args.store))
        out = args.out or Path(f"docs/img/mlflow-{'champion-model' if args.page == 'champion' else 'search-trials'}.png")
        shown = asyncio.run(take(server, args.experiment, out, args.charts, width, height, args.page,
                                 args.registered_model))
    if args.page == "champion":
        print(f"{out}: the @champion model's page ({shown[0]})")
    else:
        print(f"{out}: chart view of {len(shown)} search trials ({', '.join(shown)})")


if __name__ == "__main__":
    main()
