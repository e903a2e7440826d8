"""The lock: ``constraints.txt`` at the repository root holds the exact versions the suite last
passed with (written by ``.ci/update-lock``, installed by CI with ``pip install -c``).

A result depends on a few packages in ways that move numbers: torch (kernels, RNG streams,
defaults), numpy and scipy (resampling, statistics) and medpy (the surface metrics). When the
installed release of one of them differs from the lock, ``lock_mismatches`` names it, and
``warn_if_off_lock`` warns once (a run still goes on: the versions are recorded with every run in
``environment.json`` anyway). Local build tags (``2.14.1+cpu`` vs ``2.14.1``) do not count: a
CPU and a CUDA build of one release are the same release.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

#: the packages whose release changes results (distribution names as pip spells them)
RESULT_PACKAGES = ("torch", "numpy", "scipy", "medpy")
LOCK_NAME = "constraints.txt"
_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_path() -> Path | None:
    """``constraints.txt`` of the checkout this package runs from (an editable install or a
    clone); ``None`` for an installed copy without one."""
    path = Path(__file__).resolve().parent.parent / LOCK_NAME
    return path if path.is_file() else None


def read_lock(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line."""
    out = {}
    for line in Path(path).read_text().splitlines():
        m = _PIN.match(line)
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


def _release(version: str) -> str:
    return version.split("+", 1)[0]


def installed_versions(packages=RESULT_PACKAGES) -> dict[str, str | None]:
    from ssl_bench.provenance import installed_version

    return {name: installed_version(name) for name in packages}


def lock_mismatches(locked: dict[str, str], installed: dict[str, str | None]) -> dict[str, tuple[str, str]]:
    """``{package: (installed, locked)}`` for each result package whose release differs from the
    lock (a package the lock does not name is not compared; a missing one shows as 'not installed')."""
    out = {}
    for name, have in installed.items():
        want = locked.get(_norm(name))
        if want is None:
            continue
        if have is None or _release(have) != _release(want):
            out[name] = (have or "not installed", want)
    return out


def check_lock() -> dict[str, tuple[str, str]]:
    """Mismatches between the installed result packages and this checkout's lock ({} without one)."""
    path = lock_path()
    return lock_mismatches(read_lock(path), installed_versions()) if path else {}


_warned = False


def warn_if_off_lock() -> dict[str, tuple[str, str]]:
    """Warn (once per process) when a result package differs from the lock; returns the mismatches."""
    global _warned
    found = check_lock()
    if found and not _warned:
        _warned = True
        pkgs = ", ".join(f"{k} {have} (lock {want})" for k, (have, want) in found.items())
        warnings.warn(f"installed versions differ from constraints.txt: {pkgs}. Results may differ "
                      f"from committed ones; for the exact environment: pip install -c constraints.txt "
                      f"-e \".[dev]\"", stacklevel=2)
    return found
