"""ssl-bench: one honest, reproducible harness for semi-supervised medical image segmentation."""

__version__ = "0.1.0"


def _source_tree() -> None:
    """Run from a source checkout that is not installed (the GPU host's ``bench card``, started
    with ``PYTHONPATH=.`` from the repository root): ``pyproject.toml`` maps ``ssl_bench.methods``
    and ``ssl_bench.datasets`` from the folders ``methods/`` and ``datasets/`` beside this package,
    so their parent joins the package's path. Installed copies (editable or not) find them
    already and are left alone."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "methods" / "__init__.py").is_file() \
            and importlib.util.find_spec("ssl_bench.methods") is None:
        __path__.append(str(root))  # noqa: F821  (the package's own __path__)


_source_tree()
