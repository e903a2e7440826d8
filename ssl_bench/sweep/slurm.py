"""The Slurm executor, through submitit: one array job, one task per ``ssl-bench run``.

Each array task runs ``RunTask``: the job's own command line in a child process, exactly what
the local executor runs. On a timeout or a preemption Slurm signals the task (``--signal``
USR2, ``signal_delay_s`` before the end); submitit then calls ``RunTask.checkpoint``, which
stops the child (SIGINT, then SIGKILL) and hands back a fresh ``RunTask`` for the same command,
and requeues the task (at most ``max_requeues`` times after timeouts). The requeued run
resumes from its run dir's ``checkpoints/latest.pt``, so at most ``checkpoint_every``
iterations are redone. Submission scripts, pickled tasks and per-task stdout/stderr live in
``<sweep folder>/slurm`` (on the shared filesystem, like the results root).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field

import submitit

from ssl_bench.sweep import process
from ssl_bench.sweep.manifest import Manifest


@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str = "24:00:00"  # per array task: minutes, HH:MM:SS or D-HH:MM:SS
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 256  # array tasks running at once
    max_requeues: int = 3  # requeues after a timeout (preemptions do not count)
    extra: dict[str, str | bool] = field(default_factory=dict)  # --slurm-arg key=value: any sbatch option

    @property
    def minutes(self) -> int:
        return parse_minutes(self.time)


def parse_minutes(text: str) -> int:
    """Slurm's time formats (``90``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM[:SS]``) in whole
    minutes, rounded up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise ValueError(f"--time {text!r}: use minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # minutes
        seconds = a * 60
    if seconds <= 0:
        raise ValueError(f"--time {text!r}: give a positive time limit")
    return -(-seconds // 60)  # Slurm counts whole minutes


def parse_slurm_args(items: list[str]) -> dict[str, str | bool]:
    """``--slurm-arg key=value`` (``qos=high``) or a bare flag (``exclusive``) -> sbatch options."""
    out: dict[str, str | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ValueError(f"--slurm-arg {item!r}: use key=value, e.g. --slurm-arg qos=high")
        out[key] = value if sep else True
    return out


class RunTask(submitit.helpers.Checkpointable):
    """One job's command line as a submitit task; requeued on timeout or preemption."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.env = dict(env or {})
        self._proc = None

    def __call__(self) -> int:
        # not a new session: the child stays in the task's process group, which Slurm signals
        self._proc = process.start(self.argv, {**os.environ, **self.env}, new_session=False)
        code = self._proc.wait()
        if code != 0:
            raise RuntimeError(f"`{shlex.join(self.argv)}` exited with {code}")
        return code

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Stop the run (its last checkpoint is its state) and resubmit the same command."""
        if self._proc is not None:
            process.stop(self._proc)
        return submitit.helpers.DelayedSubmission(RunTask(self.argv, self.env))

    def __getstate__(self):
        return {"argv": self.argv, "env": self.env, "_proc": None}  # a process does not pickle


def make_executor(folder, options: SlurmOptions, job_name: str) -> submitit.SlurmExecutor:
    """A submitit executor for one array of tasks (needs ``srun``/``sbatch`` on this machine)."""
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_requeues)
    params = dict(job_name=job_name, time=options.minutes, array_parallelism=options.array_parallelism,
                  additional_parameters={"requeue": True, **options.extra})
    if options.partition:
        params["partition"] = options.partition
    if options.gpus_per_job:
        params["gpus_per_node"] = options.gpus_per_job
    if options.cpus_per_job:
        params["cpus_per_task"] = options.cpus_per_job
    if options.mem_gb:
        params["mem"] = f"{options.mem_gb:g}G"
    executor.update_parameters(**params)
    return executor


def submit(manifest: Manifest, names: list[str], options: SlurmOptions, console=None) -> dict[str, None]:
    """Submit the manifest's jobs ``names`` as one array; records each task's Slurm id and log
    paths in the manifest and prints them. Returns ``{name: None}`` (submitted, not finished)."""
    if not names:
        return {}
    env = {"OMP_NUM_THREADS": str(options.cpus_per_job)} if options.cpus_per_job else {}
    executor = make_executor(manifest.folder / "slurm", options, f"ssl-bench-{manifest.data['id']}")
    try:
        with executor.batch():
            jobs = [executor.submit(RunTask(manifest.job(name)["argv"], env)) for name in names]
    except (subprocess.CalledProcessError, submitit.core.utils.FailedSubmissionError) as exc:
        raise RuntimeError(f"sbatch refused the array: {exc}") from exc
    for name, job in zip(names, jobs):
        manifest.update(name, slurm_job_id=job.job_id, stdout=str(job.paths.stdout), stderr=str(job.paths.stderr))
        text = f"submitted {name}: Slurm job {job.job_id}\n  stdout {job.paths.stdout}\n  stderr {job.paths.stderr}"
        if console is None:
            print(text, flush=True)
        else:
            console.print(text, soft_wrap=True, highlight=False, markup=False)
    return {name: None for name in names}
