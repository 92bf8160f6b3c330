"""A few threads that own RoutingKit query objects and run queries for any caller.

RoutingKit's query objects (``CCHQuery``, ``CCHOneToMany``) are *unsendable*: only the thread
that made one may use it or drop it (dropping it elsewhere raises an unraisable
``RuntimeError`` and leaks it). Building one costs about 0.04 ms plus O(n) buffers on DIMACS
NY, as much again as the query, so they are worth reusing. :class:`QueryThreads` keeps them
on a small pool of dedicated threads: callers hand work over and wait (about 13 us per
hand-over here), so creation, use and drop all happen on the owning thread.

Retirement: the owner says which metrics are current with :meth:`QueryThreads.retain`; each
thread drops the query objects of other metrics before its next task, or within
``idle_check_s`` when idle, so a replaced metric's memory goes back promptly. A writer that
needs a metric free at once (the router's idle buffer, :func:`graph.cch.recustomize`) wakes
the threads through their caches' ``wake`` (:meth:`graph.cch.Metric.wait_unused`).
:meth:`QueryThreads.close` (also run when the owner is garbage-collected, from any thread)
makes every thread drop its query objects and exit.

A long-lived calling thread (an event loop's) may skip the hand-over and search itself: a
:class:`CallerQueries` made on that thread keeps its query objects, drops those of retired
metrics lazily on its next use (when the router's retained tuple has changed), and must be
closed on that same thread (the API does so in its lifespan, on the loop thread). Made inside
a running asyncio loop, it can be woken to drop a retired metric's query object at once
(``loop.call_soon_threadsafe``), between two requests.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from graph.cch import Metric, QueryCache

_IDLE = object()
_names = itertools.count()


class QueryThreads:
    """A pool of ``n_threads`` threads, each owning one :class:`graph.cch.QueryCache`.

    Parameters
    ----------
    n_threads
        Threads in the pool (>= 1). RoutingKit holds the GIL while it searches, so more than
        two rarely helps; two let a long table run beside short route queries.
    idle_check_s
        How often an idle thread wakes to drop the query objects of retired metrics (s).
    """

    def __init__(self, n_threads: int = 2, *, idle_check_s: float = 0.5) -> None:
        if int(n_threads) < 1:
            raise ValueError(f"n_threads must be >= 1; got {n_threads}")
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._state = _Shared()
        self._closed = False
        self._threads = []
        tag = next(_names)
        for i in range(int(n_threads)):
            th = threading.Thread(target=_serve, args=(self._tasks, self._state, idle_check_s),
                                  name=f"cch-query-{tag}-{i}", daemon=True)
            th.start()
            self._threads.append(th)
        self._idents = frozenset(th.ident for th in self._threads)

    def retain(self, metrics: Iterable[Metric]) -> None:
        """Say which metrics are current: the threads drop query objects of any other."""
        self._state.live = tuple(metrics)
        self._state.generation += 1

    @property
    def retained(self) -> tuple[Metric, ...]:
        """The metrics last given to :meth:`retain` (a new tuple object on every change)."""
        return self._state.live

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args, queries=<the thread's QueryCache>)`` on a pool thread; return its result.

        Exceptions raised by ``fn`` are re-raised here (their frames' locals cleared on the pool
        thread first, so no query object travels with the traceback).
        """
        if self._closed:
            raise RuntimeError("this router's query threads are closed")
        if threading.get_ident() in self._idents:  # re-entrant call from a pool thread
            return fn(*args, queries=self._state.caches[threading.get_ident()])
        done = threading.Lock()
        done.acquire()
        box: list[Any] = [None, None]
        self._tasks.put((fn, args, done, box))
        done.acquire()
        if box[1] is not None:
            raise box[1]
        return box[0]

    def close(self, *, timeout_s: float | None = 5.0) -> None:
        """Make every thread drop its query objects and exit (idempotent; any thread may call).

        Waits up to ``timeout_s`` for them unless called from a pool thread.
        """
        if self._closed:
            return
        self._closed = True
        self._state.live = ()
        for _ in self._threads:
            self._tasks.put(None)
        if threading.get_ident() not in self._idents and timeout_s is not None:
            for th in self._threads:
                th.join(timeout_s)

    @property
    def n_threads(self) -> int:
        """Threads in the pool."""
        return len(self._threads)

    def alive(self) -> int:
        """Threads still running (0 once closed and drained)."""
        return sum(th.is_alive() for th in self._threads)


class _Shared:
    """What the owner tells its threads: the current metrics and a change counter."""

    def __init__(self) -> None:
        self.live: tuple[Metric, ...] = ()
        self.generation = 0
        self.caches: dict[int, QueryCache] = {}


def _serve(tasks: queue.SimpleQueue[Any], state: _Shared, idle_check_s: float) -> None:
    """A pool thread: take a task, run it with this thread's query objects, hand back.

    Woken (an ``_IDLE`` item, from a writer waiting on a metric this thread holds), it drops
    the query objects of metrics no longer retained.
    """
    cache = QueryCache(wake=lambda _metric: tasks.put(_IDLE))
    me = threading.get_ident()
    state.caches[me] = cache
    seen = -1
    try:
        while True:
            try:
                item = tasks.get(timeout=idle_check_s)
            except queue.Empty:
                item = _IDLE
            if state.generation != seen or item is _IDLE:
                seen = state.generation
                cache.keep_only(state.live)
            if item is None:
                return
            if item is _IDLE:
                continue
            fn, args, done, box = item
            del item
            try:
                box[0] = fn(*args, queries=cache)
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                traceback.clear_frames(exc.__traceback__)
                box[1] = exc
            finally:
                del fn, args
                done.release()
                del done, box
    finally:
        cache.clear()
        state.caches.pop(me, None)


class CallerQueries:
    """The query objects of one long-lived calling thread (e.g. the API's event-loop thread).

    Made on the thread that will use it; :meth:`for_metrics` hands back its
    :class:`graph.cch.QueryCache` only on that thread (``None`` elsewhere or once closed, and
    the caller then makes a query object per call), first dropping the query objects of metrics
    no longer retained. :meth:`close` drops them all and must run on the owning thread; a
    CallerQueries dropped elsewhere while holding query objects would leak them, so close it.
    """

    def __init__(self) -> None:
        self._owner = threading.get_ident()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._cache = QueryCache(wake=None if loop is None else self._waker(loop))
        self._live: tuple[Metric, ...] | None = None
        self._closed = False

    def _waker(self, loop: asyncio.AbstractEventLoop) -> Callable[[Metric], None]:
        def wake(metric: Metric) -> None:
            try:
                loop.call_soon_threadsafe(self._drop, metric)
            except RuntimeError:  # the loop is closed: nothing will use the cache again
                pass
        return wake

    def _drop(self, metric: Metric) -> None:
        """On the loop thread, between requests: drop ``metric``'s query object (a writer
        waits to update it; should it be current again, the next use makes a new one)."""
        if not self._closed:
            self._cache.drop(metric)

    def for_metrics(self, live: tuple[Metric, ...]) -> QueryCache | None:
        """This thread's cache, keeping only the query objects of ``live`` (the router's
        retained metrics: compared by identity, so a retention change costs one check)."""
        if self._closed or threading.get_ident() != self._owner:
            return None
        if live is not self._live:
            self._cache.keep_only(live)
            self._live = live
        return self._cache

    def close(self) -> None:
        """Drop every query object (on the owning thread; idempotent)."""
        if self._closed:
            return
        if threading.get_ident() != self._owner:
            raise RuntimeError("CallerQueries.close() must run on the thread that made it")
        self._closed = True
        self._cache.clear()
        self._live = None

    def __len__(self) -> int:
        return len(self._cache)
