"""Counting host synchronisations on a CPU (tests only).

``HostReads`` is a torch function mode that sorts tensors into *host* tensors (drawn from a CPU
generator, built from Python values or NumPy, or computed from host tensors only) and *device*
tensors (everything else: the inputs of a step and all that is computed from them). It records
every operation that, on a GPU, would make the host wait for a device tensor: reading values
(``item``, ``tolist``, ``bool``/``int``/``float``, ``numpy``, ``cpu``, ``.to("cpu")``) and
operations whose output shape depends on device values (``nonzero``, ``unique``,
``masked_select``, boolean indexing), and copies of host tensors to a device that are not
``non_blocking`` (pageable; ``sampling.to_device`` pins instead). On a CPU nothing waits, so
this is how the tests see the syncs that the review counted on a GPU. One blind spot: on a CPU
``x.to(device)`` of a device tensor looks like a download ("to cpu"), where on a GPU it is free
if ``x`` is on that device already.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu",
         "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount"}
HOST_FACTORIES = {"tensor", "as_tensor"}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class HostReads(TorchFunctionMode):
    """``with HostReads() as r: ...`` then ``r.reads``: the names of the syncing operations."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self._host: dict[int, torch.Tensor] = {}  # id -> tensor (kept alive: ids stay unique)

    def __enter__(self):
        # torch.from_numpy is no torch function: wrap it so that its tensors count as host ones
        self._from_numpy = torch.from_numpy

        def from_numpy(a):
            t = self._from_numpy(a)
            self._host[id(t)] = t
            return t

        torch.from_numpy = from_numpy
        return super().__enter__()

    def __exit__(self, *exc):
        torch.from_numpy = self._from_numpy
        return super().__exit__(*exc)

    def _is_host(self, t: torch.Tensor) -> bool:
        return id(t) in self._host

    def _sync(self, name, args, kwargs) -> str | None:
        """The name a sync is recorded under, or None."""
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        targets = [torch.device(a) for a in (*args[1:], kwargs.get("device"))
                   if isinstance(a, (str, torch.device))]
        if self._is_host(args[0]):  # a pageable host-to-device copy waits for the device
            pageable = name == "to" and targets and not kwargs.get("non_blocking")
            return "pageable to" if pageable else None
        if name in READS:
            return name
        if name == "to" and any(t.type == "cpu" for t in targets):
            return "to cpu"
        if name == "__getitem__" and any(t.dtype == torch.bool for t in _tensors(args[1:])):
            return "boolean index"
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        sync = self._sync(name, args, kwargs)
        if sync:
            self.reads.append(sync)
        out = func(*args, **kwargs)
        inputs = list(_tensors((args, kwargs)))
        gen = kwargs.get("generator")
        host = (sync in ("cpu", "to cpu")  # what was read back is on the host
                or gen is not None and gen.device.type == "cpu"
                or name in HOST_FACTORIES and "device" not in kwargs
                or (all(self._is_host(t) for t in inputs) and "device" not in kwargs
                    and not (name.endswith("_") and not name.startswith("__"))  # in place
                    and name != "__setitem__"))
        if host:
            for t in _tensors(out):
                self._host[id(t)] = t
        return out
