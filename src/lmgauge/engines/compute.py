"""One thread runs every llama.cpp computation in this process: each loaded model's decode loop
(engines/scheduler.py) and every other call that computes (model load, context creation,
embeddings).

Why one: this llama.cpp build parallelises each graph with OpenMP, and OpenMP keeps a thread
team for every OS thread that has started a parallel region. Measured on this 2-core machine:
once a second thread had computed (a second model's decode loop, an embedding call from a
worker thread, a bare llama.cpp loop in the main thread), every model decoded about 3x slower
(SmolLM2 88 -> 28 tok/s), even while the other team sat idle; OMP_WAIT_POLICY and
GOMP_SPINCOUNT did not help, a single thread did. On a CPU only one graph can use the cores at a
time anyway, so one thread loses nothing: models take turns step by step.

The decode loops run on this thread directly (no hand-off per step); calls from other threads
(`call`) are queued and run between steps.

    compute.register(worker)      # worker.wants_to_run() under compute.lock; worker.run_once()
    rc = compute.call(L.llama_decode, ctx, batch)
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
log = logging.getLogger("lmgauge.engine")


class Worker(Protocol):
    def wants_to_run(self) -> bool:
        """Has work (called with `lock` held)."""
        ...

    def run_once(self) -> None:
        """Do one step of that work (called on the compute thread, without `lock`)."""
        ...


lock = threading.Condition()  # guards the workers' queues; notify it when a worker gets work
_workers: list[Worker] = []
_calls: deque[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = deque()
_thread: threading.Thread | None = None


def on_compute_thread() -> bool:
    return threading.current_thread() is _thread


def _start() -> None:
    global _thread
    if _thread is None:
        _thread = threading.Thread(target=_loop, name="lmgauge-llama", daemon=True)
        _thread.start()


def register(worker: Worker) -> None:
    with lock:
        _workers.append(worker)
        _start()
        lock.notify_all()


def unregister(worker: Worker) -> None:
    """Called by the worker itself (on the compute thread) when it has stopped."""
    with lock:
        if worker in _workers:
            _workers.remove(worker)


def call(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on the compute thread (directly when already on it); its exception is raised here."""
    if on_compute_thread():
        return fn(*args)
    future: Future[T] = Future()
    with lock:
        _calls.append((fn, args, future))
        _start()
        lock.notify_all()
    return future.result()


def _loop() -> None:
    while True:
        with lock:
            while True:
                ready = [w for w in _workers if w.wants_to_run()]
                if ready or _calls:
                    break
                lock.wait()
            calls = list(_calls)
            _calls.clear()
        for fn, args, future in calls:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller, who raises it
                    future.set_exception(exc)
        for worker in ready:
            try:
                worker.run_once()
            except Exception:  # a bug in one model's step must not stop every model's
                log.exception("a decode step failed")
