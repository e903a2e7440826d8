"""The Slurm executor without a cluster: the submission script and pickled tasks it writes
(with stand-in ``sbatch``/``srun`` on PATH), then the very same pickled task run end to end by
submitit's local executor, preempted (USR2, as Slurm signals it) and requeued: the requeued task
resumes the run from its last checkpoint."""
from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import submitit

from scale_jobs import ITERATIONS, TINY, job_env, metrics, toy_dataset, wait_for
from ssl_bench.sweep import SlurmOptions, expand, launch
from ssl_bench.sweep.manifest import Manifest
from ssl_bench.sweep.slurm import RunTask, parse_minutes, parse_slurm_args
from ssl_bench.sweep.status import job_statuses, last_step

FAKE_SBATCH = """#!/bin/sh
cp "$1" "$FAKE_SLURM_DIR/submitted-$(ls "$FAKE_SLURM_DIR" | wc -l).sh"
echo "Submitted batch job 4242"
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` keeps the script it is given and answers like Slurm; ``srun`` only has to exist."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-record"
    bin_dir.mkdir()
    record.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(record))
    return record


def test_time_and_slurm_arg_parsing():
    assert [parse_minutes(t) for t in ("90", "2:00:00", "1-00", "1-12:30", "0:30", "00:00:61")] == \
           [90, 120, 1440, 2190, 1, 2]
    for bad in ("soon", "0", "1:2:3:4"):
        with pytest.raises(ValueError, match="--time"):
            parse_minutes(bad)
    assert parse_slurm_args(["qos=high", "--exclusive", "constraint=a100|h100"]) == \
           {"qos": "high", "exclusive": True, "constraint": "a100|h100"}


def _submit(tmp_path, toy, seeds=(0, 1, 2)):
    jobs = expand(["gcl"], "nnunet", [2], [], list(seeds), [0], ["--iterations", str(ITERATIONS), *TINY])
    options = SlurmOptions(partition="gpu", time="2:00:00", gpus_per_job=1, cpus_per_job=4, mem_gb=16,
                           array_parallelism=2, extra={"qos": "high", "exclusive": True})
    root = tmp_path / "results"
    codes = launch(jobs, executor="slurm", results_root=root, data_root=toy, slurm=options)
    return jobs, root, codes


def test_submission_script_array_requeue_and_paths(tmp_path, toy, fake_slurm, capsys):
    jobs, root, codes = _submit(tmp_path, toy)
    assert codes == {j.name: None for j in jobs}  # submitted, not finished
    (script,) = fake_slurm.glob("submitted-*.sh")
    text = script.read_text()
    manifest = Manifest.find(root)
    folder = manifest.folder / "slurm"
    header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert header == sorted(header) and len(header) == len(set(header))
    for line in ("#SBATCH --array=0-2%2",  # 3 tasks, at most 2 at once
                 "#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@90",  # requeue after the checkpoint hook
                 "#SBATCH --qos=high", "#SBATCH --exclusive",  # --slurm-arg
                 f"#SBATCH --job-name=ssl-bench-{manifest.data['id']}",
                 f"#SBATCH --output={folder}/%A_%a_0_log.out", f"#SBATCH --error={folder}/%A_%a_0_log.err",
                 "#SBATCH --open-mode=append"):
        assert line in header, (line, text)
    assert f"-m submitit.core._submit {folder}" in text

    out = capsys.readouterr().out
    for i, job in enumerate(manifest.jobs):
        assert job["slurm_job_id"] == f"4242_{i}"
        assert job["stdout"] == str(folder / f"4242_{i}_0_log.out") and job["stderr"].endswith(f"4242_{i}_0_log.err")
        assert f"Slurm job 4242_{i}" in out and job["stdout"] in out and job["stderr"] in out
        # the pickled task is the job's own command line, with the sweep's roots
        task = submitit.core.utils.DelayedSubmission.load(folder / f"4242_{i}_submitted.pkl").function
        assert isinstance(task, RunTask) and task.argv == job["argv"] and task.env == {"OMP_NUM_THREADS": "4"}
        assert task.argv[task.argv.index("--results-root") + 1] == str(root)
        assert task.argv[task.argv.index("--seed") + 1] == str(i)
    assert [s.state for s in job_statuses(manifest)] == ["queued"] * 3


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.mark.slow
def test_the_submitted_task_runs_under_submitit_and_resumes_after_preemption(tmp_path, toy, fake_slurm, monkeypatch):
    jobs, root, _ = _submit(tmp_path, toy, seeds=(0, 1))
    manifest = Manifest.find(root)
    folder = manifest.folder / "slurm"
    tasks = [submitit.core.utils.DelayedSubmission.load(folder / f"4242_{i}_submitted.pkl").function for i in (0, 1)]
    for k, v in job_env().items():
        monkeypatch.setenv(k, v)
    local = submitit.LocalExecutor(folder=tmp_path / "local")
    local.update_parameters(timeout_min=60)

    plain = local.submit(tasks[0])
    assert plain.result() == 0
    assert metrics(Path(manifest.jobs[0]["run_dir"]))["status"] == "finished"

    preempted = local.submit(tasks[1])
    run_dir = Path(manifest.jobs[1]["run_dir"])
    wait_for(lambda: last_step(run_dir) >= 13, "step 13 of the second task")
    (task_pid,) = _children(preempted._process.pid)  # the submitit task under the local controller
    os.kill(task_pid, signal.SIGUSR2)  # what Slurm sends before a preemption or the time limit
    assert preempted.result() == 0  # requeued by submitit, then finished
    out = preempted.paths.stdout.read_text()
    assert "Calling checkpoint method" in out and "Requeued job" in out, out
    assert "resuming" in out and "stage local" in out, out
    assert metrics(run_dir)["status"] == "finished"
    assert [s.state for s in job_statuses(manifest)] == ["finished", "finished"]


def test_reproduce_submits_its_grid_as_one_array(tmp_path, fake_slurm):
    """`ssl-bench reproduce` launches through the same runner: one array job of the grid's runs."""
    from typer.testing import CliRunner

    from ssl_bench.cli import app

    res = CliRunner().invoke(app, [
        "reproduce", "table4", "--budget", "smoke", "--seeds", "0", "--executor", "slurm", "--partition", "gpu",
        "--time", "30", "--data-root", str(tmp_path / "data"), "--results-root", str(tmp_path / "results")],
        env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "submitted; when the jobs have finished" in res.output
    (script,) = fake_slurm.glob("submitted-*.sh")
    text = script.read_text()
    assert "#SBATCH --array=0-3%4" in text and "#SBATCH --partition=gpu" in text  # Table 4: 4 augmentations
    manifest = Manifest.find(tmp_path / "results")
    argvs = [job["argv"] for job in manifest.jobs]
    assert all("--protocol" in a and a[a.index("--protocol") + 1] == "field" for a in argvs)
    assert {a[a.index("--set") + 1] for a in argvs} == {f"method.student_aug={s}" for s in ("weak", "strong")}
