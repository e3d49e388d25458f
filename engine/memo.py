"""OwnerMemo: results remembered per owner object (a model, a tokenizer), shared safely by sessions.

The dashboard serves many visitors from threads that share cached models and tokenizers. A module-
level cache keyed by ``id(obj)`` can hand one object's results to another that got the same id after
the first was freed, and a plain dict mutated from two threads can lose entries. Here the owner is
held weakly (its entries go with it, and a freed owner's id can never match), each owner keeps at
most ``keep`` entries (least recently used dropped first), and every read and write takes one lock.
The computation itself runs outside the lock: two sessions asking at once may both compute (the
results are equal); neither waits on the other's work.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class OwnerMemo(Generic[Value]):
    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._entries: weakref.WeakKeyDictionary[object, OrderedDict[Hashable, Value]] = weakref.WeakKeyDictionary()

    def get(self, owner: object, key: Hashable) -> Value | None:
        with self._lock:
            known = self._entries.get(owner)
            if known is None or key not in known:
                return None
            known.move_to_end(key)
            return known[key]

    def put(self, owner: object, key: Hashable, value: Value) -> Value:
        with self._lock:
            known = self._entries.setdefault(owner, OrderedDict())
            known[key] = value
            known.move_to_end(key)
            while len(known) > self.keep:
                known.popitem(last=False)
        return value

    def get_or_compute(self, owner: object, key: Hashable, compute: Callable[[], Value]) -> Value:
        found = self.get(owner, key)
        return found if found is not None else self.put(owner, key, compute())

    def __len__(self) -> int:
        with self._lock:
            return sum(len(known) for known in self._entries.values())
