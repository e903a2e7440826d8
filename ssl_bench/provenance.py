"""Provenance of a result: the versions of the packages it depends on and the source commit."""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = {"torch": "torch", "numpy": "numpy", "smp": "segmentation-models-pytorch", "timm": "timm",
             "mlflow": "mlflow", "medpy": "medpy", "scipy": "scipy", "pandas": "pandas",
             "ssl-bench": "ssl-bench"}


def installed_version(dist: str) -> str | None:
    """The installed release of distribution ``dist``, None if it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on ("not installed" if absent)."""
    out = {key: installed_version(dist) or "not installed" for key, dist in _PACKAGES.items()}
    out["python"] = sys.version.split()[0]
    return out


def git_commit(source_dir: str | Path | None = None) -> str:
    """The commit of the ssl-bench source checkout, ``-dirty`` if it has uncommitted changes
    (untracked, non-ignored files count), ``unknown`` if the source is not a git checkout."""
    src = Path(source_dir) if source_dir else Path(__file__).resolve().parent.parent
    try:
        top = _git(src, "rev-parse", "--show-toplevel")
        # an installed copy inside some unrelated repository is not a checkout of ssl-bench
        if Path(top).resolve() != src.resolve():
            return "unknown"
        commit = _git(src, "rev-parse", "HEAD")
        dirty = _git(src, "status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _git(cwd: Path, *args: str) -> str:
    res = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise subprocess.SubprocessError(res.stderr.strip())
    return res.stdout.strip()
