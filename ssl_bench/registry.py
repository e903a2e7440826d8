"""Strict, timm-style registries for methods and datasets.

A registry is a dict plus a decorator. Registering a name twice is an error (silently
replacing a method would make a benchmark row mean something else). Third-party plugins
register through the entry-point groups ``ssl_bench.methods`` and ``ssl_bench.datasets``:
each entry point names a module (or an object inside it) whose import runs the decorator.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown or duplicate name in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    paper: str


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin_module: str, entry_point_group: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._builtin_module = builtin_module
        self._group = entry_point_group
        self._loaded = False
        self._plugin_errors: dict[str, str] = {}

    def register(self, name: str, description: str = "", paper: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {self._entries[name].obj!r}); "
                    f"pick another name"
                )
            desc = description or _first_line(getattr(obj, "__doc__", None))
            self._entries[name] = Entry(name, obj, desc, paper or getattr(obj, "paper", ""))
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    def load(self) -> None:
        """Import the built-ins, then every installed plugin (once)."""
        if self._loaded:
            return
        self._loaded = True
        import_module(self._builtin_module)
        for ep in entry_points(group=self._group):
            try:
                ep.load()
            except RegistryError:
                raise
            except Exception as exc:  # a broken plugin must not hide the built-ins
                self._plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"

    def get(self, name: str) -> Entry[T]:
        self.load()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "none"
            hint = ""
            if name in self._plugin_errors:
                hint = f" (its plugin failed to load: {self._plugin_errors[name]})"
            raise RegistryError(f"unknown {self.kind} {name!r}{hint}; known: {known}")
        return self._entries[name]

    def list(self, pattern: str = "*") -> list[str]:
        self.load()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry[T]]:
        return [self._entries[n] for n in self.list(pattern)]

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._entries

    def unregister(self, name: str) -> None:
        """For tests only."""
        self._entries.pop(name, None)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].strip() if (doc or "").strip() else ""


METHODS: Registry[Any] = Registry("method", "ssl_bench.methods", "ssl_bench.methods")
DATASETS: Registry[Any] = Registry("dataset", "ssl_bench.datasets", "ssl_bench.datasets")

register_method = METHODS.register
register_dataset = DATASETS.register


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def get_method_class(name: str):
    return METHODS.get(name).obj


def is_supervised_only(method: str) -> bool:
    """Whether ``method`` uses no unlabeled data (UNet-L); False for a plugin not installed here."""
    try:
        return bool(getattr(get_method_class(method), "supervised_only", False))
    except Exception:  # a plugin not installed here
        return False


def step_images(method: str, labeled_bs: int, unlabeled_bs: int, whole_batch: bool = False) -> tuple[int, int]:
    """The (labeled, unlabeled) images a training step of ``method`` puts through its networks: a
    supervised-only method (UNet-L) sees its labeled images only, or the whole batch labeled where
    ``supervised_whole_batch`` is set (``engine.fit``); every other method sees both. A method not
    installed here counts as one that sees both."""
    if not is_supervised_only(method):
        return labeled_bs, unlabeled_bs
    return (labeled_bs + unlabeled_bs if whole_batch else labeled_bs), 0


def get_dataset_class(name: str):
    return DATASETS.get(name).obj
