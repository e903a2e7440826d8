"""A run records the process that writes it; `sweep status` tells a run left `running` by a killed
process (or a machine restart that handed its pid to another process) from a live one."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from ssl_bench import mlflow_store, owner, tracking
from ssl_bench.sweep.status import job_status


def test_start_time_of_this_process_and_of_a_missing_one():
    started = owner.start_time(os.getpid())
    if started is None:  # no /proc: the pid alone is checked
        return
    assert time.time() - 7 * 24 * 3600 < started <= time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        child_started = owner.start_time(child.pid)
        assert child_started is not None and started <= child_started <= time.time() + 1
        assert owner.is_alive(child.pid, child_started)
        assert not owner.is_alive(child.pid, child_started - 600)  # the same pid, started earlier: not it
    finally:
        child.kill()
        child.wait()
    assert owner.start_time(child.pid) is None
    assert not owner.is_alive(child.pid) and not owner.is_alive(child.pid, child_started)


def test_tracker_start_records_its_process(tmp_path):
    t = tracking.RunTracker(tmp_path / "run", mlflow_store.default_tracking_uri(tmp_path), "ssl-bench/tiny-test", "r",
                            {"method": "mt"}, {})
    t.start()
    tags = json.loads((tmp_path / "run" / "tags.json").read_text())
    assert (tags["host"], tags["pid"], tags["status"]) == (socket.gethostname(), str(os.getpid()), "running")
    assert owner.owner_alive(tags) is True


def test_a_run_left_running_by_a_dead_process_is_stopped_not_running(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text('{"step": 30, "metrics": {}}\n')
    entry = {"name": "j", "run_dir": str(run_dir), "iterations": 60}  # not (yet) started by this launch

    def status_with(**tags):
        (run_dir / "tags.json").write_text(json.dumps({"status": "running", **tags}))
        return job_status(entry)

    me = owner.identity()
    assert status_with(**me).state == "running"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    s = status_with(host=me["host"], pid=str(gone.pid), pid_started="")
    assert (s.state, s.progress) == ("stopped", "30/60 (50%)") and f"pid {gone.pid}" in s.detail
    if me["pid_started"]:  # this pid, but a process that started long before: the pid was reused
        reused = str(float(me["pid_started"]) - 3600)
        assert status_with(host=me["host"], pid=me["pid"], pid_started=reused).state == "stopped"
    # another host (a Slurm node) or a run from before owners were recorded: its tags are believed
    assert status_with(host="node-17", pid=str(gone.pid)).state == "running"
    assert status_with().state == "running"


def test_a_launcher_pid_reused_by_another_process_is_not_the_job(tmp_path):
    entry = {"name": "j", "run_dir": str(tmp_path / "run"), "iterations": 60, "host": socket.gethostname(),
             "pid": os.getpid(), "slot": "cpu 0"}
    assert job_status(entry).state == "running"  # no start recorded: the pid alone
    started = owner.start_time(os.getpid())
    if started is None:
        return
    assert job_status({**entry, "started": started + 0.5}).state == "running"
    s = job_status({**entry, "started": started - 3600})  # the launcher started its job an hour earlier
    assert s.state == "stopped" and "re-run the sweep" in s.detail
