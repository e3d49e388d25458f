"""A bounded, locked cache of loaded models, for a process that serves many requests."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from engine import guard
from engine.errors import OverBudget
from engine.guard import MemoryBudget, Use
from engine.models.admission import Admitted, admit, fetch, model_bytes
from engine.models.loading import LoadedModel, choose_device, choose_dtype, load_model
from engine.progress import Progress, no_progress
from engine.specs import ModelSpec

MB = 2**20
Token = tuple[MemoryBudget, int] | None  # a model's entry in the ledger of the budget it was admitted under


@dataclass
class _Held:
    model: LoadedModel
    bytes: int
    token: Token  # its entry in the memory budget's ledger


class ModelCache:
    """At most ``capacity`` models in memory, least recently used evicted first; every model
    calibscope loads counts, the reload check's included (``borrow``).

    A request is admitted first (``engine.models.admission``: the name passes the guard's policy; on
    a shared Space its size and files are checked and its files downloaded), so a request that
    fails there evicts nothing. Room is then made under one lock: the slots of cached models, of
    loads in progress and of borrowed models together never exceed the capacity, and under a memory
    budget the models' bytes must fit it too (least recently used models are evicted for both, or the
    request is refused with the numbers and nothing is evicted). A model evicted while a pass still
    runs on it (holding its lock) is waited for before the new one loads. Two callers asking for the
    same model load it once. ``loader`` and ``admitter`` are replaced by tests.
    """

    def __init__(self, capacity: int = 2, loader=load_model, admitter=admit) -> None:
        self.capacity = capacity
        self._loader = loader
        self._admit = admitter
        self._models: OrderedDict[ModelSpec, _Held] = OrderedDict()
        self._busy = 0  # slots taken by loads in progress and borrowed models
        self._changed = threading.Condition()
        self._loading: dict[ModelSpec, threading.Lock] = {}

    def _cached(self, spec: ModelSpec) -> LoadedModel | None:
        with self._changed:
            held = self._models.get(spec)
            if held is None:
                return None
            self._models.move_to_end(spec)
            return held.model

    def get(self, spec: ModelSpec, progress: Progress = no_progress) -> LoadedModel:
        found = self._cached(spec)
        if found is not None:
            return found
        with self._changed:
            spec_lock = self._loading.setdefault(spec, threading.Lock())
        try:
            with spec_lock:
                found = self._cached(spec)
                if found is not None:
                    return found
                admitted = self._admit(spec)
                with self._changed:
                    loaded_specs = list(self._models)
                fetch(admitted, keep=loaded_specs)
                size = self._bytes(admitted)
                token = self._take_slot(f"Loading {spec.name}", size)
                try:
                    loaded = self._loader(admitted.spec, progress)
                except BaseException:
                    self._give_back(token)
                    raise
                with self._changed:
                    self._models[spec] = _Held(loaded, size, token)
                    self._busy -= 1  # the slot passes from the load to the cached model
                    self._changed.notify_all()
                return loaded
        finally:
            with self._changed:
                if not spec_lock.locked() and self._loading.get(spec) is spec_lock:
                    del self._loading[spec]

    @contextmanager
    def borrow(self, what: str, size: int) -> Iterator[None]:
        """A slot (and ``size`` bytes of the memory budget) for a model loaded outside the cache, such
        as a checkpoint reloaded to check it; given back when the block ends."""
        token = self._take_slot(what, size)
        try:
            yield
        finally:
            self._give_back(token)

    @staticmethod
    def _bytes(admitted: Admitted) -> int:
        if not admitted.parameters:
            return 0
        spec = admitted.spec
        return model_bytes(admitted, choose_dtype(spec.dtype, choose_device(spec.device)).itemsize)

    def _take_slot(self, what: str, size: int) -> Token:
        """Make room for one more model of ``size`` bytes and take its slot; returns its memory token."""
        memory = guard.current().memory
        with self._changed:
            while self._busy >= self.capacity:  # every slot is a load in progress or a borrowed model
                self._changed.wait()
            victims = list(self._victims(size, memory, what).items())
            for spec, _ in victims:
                del self._models[spec]
            self._busy += 1
        for _, held in victims:  # a pass still running on an evicted model ends before the new one loads
            lock = getattr(held.model, "lock", None)
            if lock is not None:
                with lock:
                    pass
            self._release(held.token)
        del victims
        try:
            return (memory, memory.admit(Use.MODEL, what, size)) if memory is not None else None
        except OverBudget:
            self._give_back(None)
            raise

    def _victims(self, size: int, memory, what: str) -> dict[ModelSpec, _Held]:
        """The least recently used models to evict so that one more fits the slots and the memory
        budget; OverBudget (nothing evicted) when even evicting all would not make it fit."""
        victims: dict[ModelSpec, _Held] = {}
        freed = 0
        over = (memory.used() + size - memory.total) if memory is not None else 0
        for spec, held in self._models.items():
            if len(self._models) - len(victims) + self._busy < self.capacity and freed >= over:
                break
            victims[spec] = held
            freed += held.bytes
        if freed < over:
            raise OverBudget(f"{what} needs about {size / MB:,.0f} MB, and this Space's memory budget of "
                             f"{memory.total / MB:,.0f} MB cannot hold it even with every other model unloaded "
                             f"({memory.used() / MB:,.0f} MB in use). Pick a smaller model or dtype, or try again later.")
        return victims

    def _give_back(self, token: Token) -> None:
        with self._changed:
            self._busy -= 1
            self._changed.notify_all()
        self._release(token)

    @staticmethod
    def _release(token: Token) -> None:
        if token is not None:
            memory, entry = token
            memory.release(entry)

    def __len__(self) -> int:
        with self._changed:
            return len(self._models)

    def __contains__(self, spec: ModelSpec) -> bool:
        with self._changed:
            return spec in self._models

    def held(self) -> int:
        """Models in memory now, cached or being loaded or borrowed."""
        with self._changed:
            return len(self._models) + self._busy
