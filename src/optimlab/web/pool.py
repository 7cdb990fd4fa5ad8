"""Bounded work: heavy computations run in worker processes, each with a time limit, a few at a time.

A thread cannot be stopped, a process can: pebble's pool kills a worker whose task runs past its time
limit and starts a fresh one. At most `workers` computations run at once; up to `queue` more wait,
and beyond that a request is turned away at once (429) instead of piling up. Every computation is a
pure function of its request (races and ablations are seeded), so answers are kept in a small LRU
cache: a shared link or a page reload costs nothing, and identical requests that arrive together share
one computation.
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import threading
from concurrent.futures import TimeoutError as FutureTimeout

from pebble import ProcessExpired, ProcessPool

from . import compute

# Seconds one computation may take before its worker is killed (a loaded 2-core machine: generous).
TIME_LIMITS = {"race": 20.0, "precondition": 20.0, "surface": 10.0, "breakit": 60.0, "sweep": 60.0,
               "claims": 90.0}


class Busy(Exception):
    """Too many computations are running or waiting: try again shortly."""


class TooLong(Exception):
    """The computation ran past its time limit and was stopped."""


class Failed(Exception):
    """The library refused the request (a ValueError or the like raised in the worker)."""


class Pool:
    def __init__(self, workers: int = 2, queue: int = 16, cache: int = 256, time_scale: float = 1.0):
        # spawn, not fork: a forked child inherits torch's thread pool in an unknown state
        self._pool = ProcessPool(max_workers=workers, context=multiprocessing.get_context("spawn"),
                                 initializer=compute.prepare)
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._cache: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._cache_size = cache
        self._running: dict[str, object] = {}  # key -> the future of a computation under way
        self._lock = threading.Lock()
        self.time_scale = time_scale
        self.workers, self.queue = workers, queue

    def warm(self) -> None:
        """Start every worker (importing torch and optimlab takes seconds) before the first request."""
        futures = [self._pool.schedule(compute.run, ("race", {"landscape": "canyon", "optimizers": ["sgd"],
                                                             "steps": 1}))
                   for _ in range(2 * self.workers)]
        for f in futures:
            f.result()

    async def run(self, kind: str, request: dict) -> dict:
        key = kind + json.dumps(request, sort_keys=True)
        limit = TIME_LIMITS[kind] * self.time_scale
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            future = self._running.get(key)
            if future is None:  # else the same request is being computed: wait for that answer
                if not self._slots.acquire(blocking=False):
                    raise Busy(f"{self.workers} computations are running and {self.queue} waiting; "
                               "try again shortly")
                future = self._pool.schedule(compute.run, (kind, request), timeout=limit)
                self._running[key] = future
                future.add_done_callback(lambda done: self._finished(key, done))
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            raise TooLong(f"{kind} ran past its limit of {limit:g} s and was stopped; ask for less work "
                          "(fewer steps, optimizers or grid points)") from None
        except (ValueError, TypeError, ArithmeticError, RuntimeError, IndexError, KeyError) as err:
            # the library's answer to settings it cannot run: the caller's input, not a server fault
            raise Failed(f"{type(err).__name__}: {err}") from None
        except ProcessExpired as err:  # the worker died (killed, out of memory): a fresh one replaces it
            raise Failed(f"the computation's worker process ended abnormally ({err})") from None

    def _finished(self, key: str, future) -> None:
        """In pebble's thread, once a computation ends: free its slot, keep a good answer."""
        with self._lock:
            self._running.pop(key, None)
            self._slots.release()
            if not future.cancelled() and future.exception() is None:
                self._cache[key] = future.result()
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=10)
