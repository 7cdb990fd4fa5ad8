"""Bounded work: heavy computations run in worker processes, each with a time limit, a few at a time.

A thread cannot be stopped, a process can: pebble's pool kills a worker whose task runs past its time
limit and starts a fresh one. At most `workers` computations run at once; up to `queue` more wait,
and beyond that a request is turned away at once (429) instead of piling up. Every computation is a
pure function of its request (races and ablations are seeded), so answers are kept in a small LRU
cache: a shared link or a page reload costs nothing, and identical requests that arrive together share
one computation.

Races that wait for a worker and differ only in their start point are run as one computation
(`lab.races.race_many`): a race on a 2-D landscape costs its per-step overhead, not its arithmetic, so
a class of learners clicking start points at once is answered at about the cost of one race, with the
same numbers as one by one. A race waits GATHER seconds for such company before it starts, and its
optimizers are raced in parallel, one per worker task, so one race uses every idle worker.
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from pebble import ProcessExpired, ProcessPool

from . import compute

# Seconds one computation may take before its worker is killed (a loaded 2-core machine: generous).
TIME_LIMITS = {"race": 20.0, "precondition": 20.0, "surface": 10.0, "breakit": 60.0, "sweep": 60.0,
               "claims": 90.0}


MAX_STARTS = 16  # race requests run together at most: the batch still costs about one race
GATHER = 0.01  # seconds a race waits for others to join it (clients answered together come back together)


class Busy(Exception):
    """Too many computations are running or waiting: try again shortly."""


class TooLong(Exception):
    """The computation ran past its time limit and was stopped."""


class Failed(Exception):
    """The library refused the request (a ValueError or the like raised in the worker)."""


class _Job:
    """One computation waiting for a worker: a request, or races that differ only in their start."""

    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self.members: list[tuple[str, dict, Future]] = []  # (cache key, request, the answer to come)
        self.created = time.monotonic()
        self.parts: list = []  # a race's answers per optimizer (one worker task each), as they arrive
        self.failed = None  # the first error of any part


class Pool:
    def __init__(self, workers: int = 2, queue: int = 16, cache: int = 256, time_scale: float = 1.0):
        # spawn, not fork: a forked child inherits torch's thread pool in an unknown state
        self._pool = ProcessPool(max_workers=workers, context=multiprocessing.get_context("spawn"),
                                 initializer=compute.prepare)
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._cache: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._cache_size = cache
        self._running: dict[str, Future] = {}  # key -> the answer of a request waiting or under way
        self._waiting: collections.deque[_Job] = collections.deque()  # first come, first computed
        self._open: dict[str, _Job] = {}  # race group -> the waiting job that more starts may join
        self._busy = 0  # worker tasks handed out and not finished
        self._timer: threading.Timer | None = None  # a gathering race's start, pending
        self.computations = 0  # handed to the workers so far (a batch of races counts once)
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
            if future is None:  # else the same request is waiting or under way: wait for that answer
                if not self._slots.acquire(blocking=False):
                    raise Busy(f"{self.workers} computations are running and {self.queue} waiting; "
                               "try again shortly")
                future = self._running[key] = Future()
                self._join(kind, key, request, future)
                self._dispatch()
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

    def _join(self, kind: str, key: str, request: dict, future: Future) -> None:
        """Queue a request (under the lock): a race joins a waiting race that differs only in its start."""
        group = key
        if kind == "race":
            group = kind + json.dumps({k: v for k, v in request.items() if k != "start"}, sort_keys=True)
        job = self._open.get(group)
        if job is None or len(job.members) >= MAX_STARTS:
            job = _Job(kind, group)
            self._waiting.append(job)
            if kind == "race":
                self._open[group] = job
        job.members.append((key, request, future))

    def _dispatch(self) -> None:
        """Hand waiting jobs to free workers (under the lock)."""
        while self._busy < self.workers and self._waiting:
            job = self._waiting[0]
            wait = job.created + GATHER - time.monotonic()
            if job.kind == "race" and wait > 0:  # let the others of its group join it first
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._gathered)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._waiting.popleft()
            if self._open.get(job.group) is job:
                del self._open[job.group]
            self.computations += 1
            limit = TIME_LIMITS[job.kind] * self.time_scale * len(job.members)  # each start its share
            if job.kind == "race":
                request = {**job.members[0][1], "starts": [r.get("start") for _, r, _ in job.members]}
                request.pop("start", None)
                tasks = [("races", {**request, "only": k}) for k in range(_count(request["optimizers"]))]
                tasks = tasks or [("races", request)]  # none named: the library's own refusal, as one task
            else:
                tasks = [(job.kind, job.members[0][1])]
            job.parts = [None] * len(tasks)
            self._busy += len(tasks)
            for k, task in enumerate(tasks):
                done = self._pool.schedule(compute.run, task, timeout=limit)
                done.add_done_callback(lambda done, job=job, k=k: self._finished(job, k, done))

    def _gathered(self) -> None:
        with self._lock:
            self._timer = None
            self._dispatch()

    def _finished(self, job: _Job, k: int, done) -> None:
        """In pebble's thread, once a worker task ends: when the job's last part is in, answer its requests
        (a race's parts side by side, in the order of its optimizers) and keep good answers; go on."""
        error = done.exception() if not done.cancelled() else None
        with self._lock:
            self._busy -= 1
            if job.parts is None:  # answered already: another part failed first
                return self._dispatch()
            if done.cancelled() or error is not None:
                job.failed = job.failed or error or True
            else:
                job.parts[k] = done.result()
            if not job.failed and any(part is None for part in job.parts):
                return self._dispatch()
            answers = None if job.failed else _assemble(job)
            job.parts = None
            for i, (key, _, _) in enumerate(job.members):
                self._running.pop(key, None)
                self._slots.release()
                if answers is not None:
                    self._cache[key] = answers[i]
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            self._dispatch()
        for i, (_, _, future) in enumerate(job.members):
            if answers is not None:
                future.set_result(answers[i])
            elif isinstance(job.failed, BaseException):
                future.set_exception(job.failed)
            else:
                future.cancel()

    def close(self) -> None:
        with self._lock:  # requests still waiting for a worker get no answer: never leave them hanging
            if self._timer is not None:
                self._timer.cancel()
            for job in self._waiting:
                for _, _, future in job.members:
                    future.cancel()
            self._waiting.clear()
        self._pool.stop()
        self._pool.join(timeout=10)


def _count(optimizers: list[str]) -> int:
    """How many optimizers a race request names (an item may be a comma-separated list)."""
    from optimlab.settings import split_list

    return sum(len(split_list(text)) for text in optimizers)


def _assemble(job: _Job) -> list:
    """Each member's answer: a race's parts (one optimizer each) joined, in order; other answers as is."""
    if job.kind != "race":
        return job.parts
    answers = []
    for i in range(len(job.members)):
        runs = [run for part in job.parts for run in part[i]["runs"]]
        answers.append({**job.parts[0][i], "runs": runs})
    return answers
