"""A bounded, locked cache of loaded models, for a process that serves many requests."""
from __future__ import annotations

import threading
from collections import OrderedDict

from engine.models.loading import LoadedModel, load_model
from engine.progress import Progress, no_progress
from engine.specs import ModelSpec


class ModelCache:
    """At most ``capacity`` loaded models, least recently used evicted first.

    Two callers asking for the same model at once load it once: the second waits on a per-model
    lock instead of loading a second copy. ``loader`` is ``load_model`` unless a test replaces it.

    Memory stays bounded by ``capacity`` models: room is made before a load, and a model evicted
    while a pass still runs on it (holding its lock) is waited for: the new model loads only once
    that pass has ended and let the evicted one go.
    """

    def __init__(self, capacity: int = 2, loader=load_model) -> None:
        self.capacity = capacity
        self._loader = loader
        self._models: OrderedDict[ModelSpec, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[ModelSpec, threading.Lock] = {}

    def _cached(self, spec: ModelSpec) -> LoadedModel | None:
        with self._lock:
            if spec in self._models:
                self._models.move_to_end(spec)
                return self._models[spec]
            return None

    def get(self, spec: ModelSpec, progress: Progress = no_progress) -> LoadedModel:
        found = self._cached(spec)
        if found is not None:
            return found
        with self._lock:
            spec_lock = self._loading.setdefault(spec, threading.Lock())
        with spec_lock:
            found = self._cached(spec)
            if found is not None:
                return found
            self._make_room()
            loaded = self._loader(spec, progress)
            with self._lock:
                self._models[spec] = loaded
            return loaded

    def _make_room(self) -> None:
        """Evict the least recently used models until one more fits, then wait for any pass still
        running on them (its model lock) to end."""
        with self._lock:
            evicted = []
            while self._models and len(self._models) >= self.capacity:
                evicted.append(self._models.popitem(last=False)[1])
        for model in evicted:
            lock = getattr(model, "lock", None)
            if lock is not None:
                with lock:
                    pass

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def __contains__(self, spec: ModelSpec) -> bool:
        with self._lock:
            return spec in self._models
