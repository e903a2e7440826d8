"""The lock (constraints.txt): parsed, compared with what is installed, and complete."""
from __future__ import annotations

import re

import warnings
from pathlib import Path

import pytest

from ssl_bench import lock

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_mismatches_compare_releases_and_ignore_build_tags():
    locked = {"torch": "2.14.1", "numpy": "2.4.6", "scipy": "1.17.1"}
    installed = {"torch": "2.14.1+cpu", "numpy": "2.3.0", "scipy": None, "medpy": "0.5.2"}
    assert lock.lock_mismatches(locked, installed) == {"numpy": ("2.3.0", "2.4.6"),
                                                      "scipy": ("not installed", "1.17.1")}
    assert lock.lock_mismatches(locked, {"torch": "2.14.1"}) == {}


def test_read_lock_normalises_names_and_skips_comments(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("# header\nMedPy==0.5.2\nsegmentation_models_pytorch==0.6.0\nfoo>=1\n\n")
    assert lock.read_lock(p) == {"medpy": "0.5.2", "segmentation-models-pytorch": "0.6.0"}


def test_warning_names_the_package_and_the_fix_once(monkeypatch):
    monkeypatch.setattr(lock, "_warned", False)
    monkeypatch.setattr(lock, "installed_versions", lambda packages=lock.RESULT_PACKAGES: {"torch": "1.0.0"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = lock.warn_if_off_lock()
        second = lock.warn_if_off_lock()
    assert first == second and first["torch"][0] == "1.0.0"
    [w] = caught
    assert "torch 1.0.0 (lock" in str(w.message) and "pip install -c constraints.txt" in str(w.message)


def test_the_lock_pins_every_dependency_of_pyproject():
    """A dependency added to pyproject.toml without regenerating the lock fails here."""
    locked = lock.read_lock(ROOT / lock.LOCK_NAME)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    names = {lock._norm(re.split(r"[<>=!~\[ ;]", d, 1)[0]) for d in wanted}
    assert names - set(locked) == set(), "run .ci/update-lock"
    assert set(lock.RESULT_PACKAGES) <= set(locked)
