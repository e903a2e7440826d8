"""`ssl-bench ui` for real: a server on a free loopback port, the runs through MLflow's REST API,
a SIGTERM (and a Ctrl-C) that leave no process of the server and a free port; the report and
the UI's runs page rendered by headless Chromium (Debian's `chromium` package)."""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def group_members(pgid: int) -> dict[int, str]:
    """pid -> command of every running (not zombie) process of a process group."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = tail.split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out[int(stat.parent.name)] = cmd
    return out


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_free(port: int) -> bool:
    """Nobody listens on the port, and a server can bind it again (as servers do, with
    SO_REUSEADDR: the closed connections' TIME_WAIT entries do not block it)."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def rest(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def as_background_job() -> None:
    """Start a child as a non-interactive shell starts a background job (``cmd &``): with SIGINT
    ignored, which the child inherits. Ctrl-C (SIGINT) must stop ``ssl-bench ui`` all the same."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class UI:
    """``ssl-bench ui`` in a subprocess; its printed links and its server's process group."""

    def __init__(self, root: Path, uri: str, **env):
        self.pgid = None
        self.proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", "ui", "--results-root", str(root),
                                      "--tracking-uri", uri],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **env}, preexec_fn=as_background_job)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout], daemon=True).start()
        self.output = ""
        try:
            self._wait_until_served()
        except BaseException:
            self.stop()  # never leave a server behind a failed test
            raise

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:  # the test fails, but leaves no server behind
            if self.pgid is not None:  # the server's own group (never this test's)
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()
            raise

    def _wait_until_served(self) -> None:
        m = self.wait_for(r"MLflow UI on (http://127\.0\.0\.1:(\d+))/", 120)
        self.base, self.port = m.group(1), int(m.group(2))
        self.experiment_url = self.wait_for(r"ssl-bench/tiny-test: (\S+)", 30).group(1)
        deadline = time.monotonic() + 240
        while True:  # the server answers
            try:
                self.experiments = rest(self.base, "experiments/search?max_results=100")["experiments"]
                break
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, self.output
                time.sleep(1)
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        self.pgid = os.getpgid(int(children[0]))
        assert self.pgid != os.getpgid(self.proc.pid)  # the server has a process group of its own

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (m := re.search(pattern, self.output)):
            try:
                self.output += self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {pattern!r} within {timeout} s; output:\n{self.output}")
        return m


def old_style_run(root: Path, uri: str) -> str:
    """A finished run as ssl-bench logged it before the headline metrics and short tags existed."""
    from mlflow import MlflowClient

    from ssl_bench.mlflow_store import FILTER_TAGS
    from ssl_bench.tracking import RunTracker

    t = RunTracker(root / "old", uri, "ssl-bench/tiny-test", "old run",
                   {"method": "mt", "dataset": "tiny-test", "setting": "3 labeled", "seed": 5, "split_seed": 0}, {})
    t.start()
    t.log_final({"test/best/dice/mean": 0.5, "test/best/dice/ring": 0.4, "test/best/asd_vox/mean": 3.0})
    t.set_status("finished")
    client = MlflowClient(uri)
    for key in FILTER_TAGS:
        client.delete_tag(t.run_id, key)
    return t.run_id


def test_ui_serves_the_runs_and_sigterm_stops_the_whole_server(tiny_runs, tmp_path):
    root, uri = tiny_runs
    shutil.copyfile(root / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old_id = old_style_run(tmp_path, uri)
    # job execution on: MLflow then also starts its job runner and huey workers (the tree a plain
    # SIGTERM to `mlflow ui` leaves behind)
    ui = UI(root, uri, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="true")
    try:
        (exp,) = [e for e in ui.experiments if e["name"] == "ssl-bench/tiny-test"]
        tags = {t["key"]: t["value"] for t in exp["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        view = json.loads(tags["mlflow.sharedViewState.ssl-bench"])["selectedColumns"]
        assert view[:4] == ["metrics.`ASD/mean`", "metrics.`ASD/core`", "metrics.`ASD/ring`", "metrics.`DSC/mean`"]
        assert "tags.`method`" in view
        runs = rest(ui.base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        names = {r["info"]["run_name"] for r in runs}
        assert "mt / tiny-test / 2 labeled / seed1 / paper-v1" in names and len(runs) == 7
        old = next(r for r in runs if r["info"]["run_id"] == old_id)  # given its UI fields at start
        assert {m["key"]: m["value"] for m in old["data"]["metrics"]}["DSC/ring"] == pytest.approx(40.0)
        assert {t["key"]: t["value"] for t in old["data"]["tags"]}["method"] == "mt"
        mt = next(r for r in runs if r["info"]["run_name"] == "mt / tiny-test / 4 labeled / seed0 / paper-v1")
        tags = {t["key"]: t["value"] for t in mt["data"]["tags"]}
        assert tags["method"] == "mt" and tags["protocol"] == "paper-v1" and tags["setting"] == "4 labeled"
        metrics = {m["key"]: m["value"] for m in mt["data"]["metrics"]}
        assert metrics["DSC/mean"] == pytest.approx(100 * metrics["test/best/dice/mean"])
        assert metrics["ASD/ring"] == pytest.approx(metrics["test/best/asd_vox/ring"])
        only = rest(ui.base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100,
                                             "filter": "tags.method = 'mt' and tags.protocol = 'paper-v1'"})
        assert sorted(r["info"]["run_name"] for r in only["runs"]) == sorted(
            n for n in names if n.startswith("mt / tiny-test"))
        deadline = time.monotonic() + 180  # wait for the job runner's workers to be up
        while not any("huey" in c for c in group_members(ui.pgid).values()):
            assert time.monotonic() < deadline, group_members(ui.pgid)
            time.sleep(1)
        time.sleep(3)
        members = group_members(ui.pgid)
        assert any("uvicorn" in c for c in members.values()) and len(members) >= 4, members
    finally:
        code = ui.stop(signal.SIGTERM)
    assert code == 0
    assert group_members(ui.pgid) == {}
    assert not [pid for pid in members if running(pid)]
    assert port_free(ui.port)


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium package is not installed and this test cannot install it: "
                    "`apt-get install -y chromium` (.ci/run does) runs the browser tests")
    return exe


def browse(url: str, *args: str, budget_ms: int = 20000) -> str:
    """Headless Chromium on ``url`` (loopback or file), a fresh profile; returns stdout."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        res = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              f"--virtual-time-budget={budget_ms}", *args, url],
                             capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_report_and_runs_page_in_chromium(tiny_runs, tmp_path):
    from typer.testing import CliRunner

    from ssl_bench.cli import app

    chromium()
    root, uri = tiny_runs
    report = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", "--dataset", "tiny-test", "--results-root", str(root),
                                   "--tracking-uri", uri, "--data-root", str(tmp_path / "data"), "-o", str(report)])
    assert res.exit_code == 0, res.output
    dom = browse(report.as_uri(), "--dump-dom")
    assert "UNet-L" in dom and "MT" in dom and dom.count("<img") == 5
    shot = tmp_path / "report.png"
    browse(report.as_uri(), f"--screenshot={shot}", "--window-size=1200,900")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ui = UI(root, uri)
    try:
        assert "workflowType=machine_learning" in ui.experiment_url
        dom = browse(ui.experiment_url, "--dump-dom", "--window-size=1800,1000")  # the grid renders what is in view
        # the experiment opens on its runs table: every run name, with its method, is on the page,
        # and the headline columns
        for name in ("unet-l / tiny-test / 2 labeled / seed0 / paper-v1", "mt / tiny-test / 4 labeled / seed0 / paper-v1"):
            assert name in dom
        assert "DSC/mean" in dom and "ASD/ring" in dom
    finally:
        code = ui.stop(signal.SIGINT)  # Ctrl-C
    assert code == 0 and group_members(ui.pgid) == {} and port_free(ui.port)
