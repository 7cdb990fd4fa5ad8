"""Bounded, thread-safe memo tables for what the engine derives once: graphs, kernels, state shapes.

Each is keyed by everything its value depends on (the rule's code, its static flags, dtypes), so a
stale entry can never be found; the bound only limits memory when keys keep changing (a notebook
redefining a rule over and over), evicting the least recently used entry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable


class BoundedCache:
    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], object]):
        """The value for key, made (outside the lock: making may trace or compile) on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
