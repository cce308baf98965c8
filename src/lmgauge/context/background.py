"""Memory work off the critical path: extraction and compaction run after the answer is shown.

One worker thread per conversation, first in first out, so the jobs of a turn run in order
(the extraction of turn N before the compaction that pins its memories). A job that fails
leaves a warning for the next turn; it never fails a turn. The engine runs these calls in its
second decode slot (`parallel = 2`), so they do not evict the chat's prefix cache.

    work = Background()
    work.submit("extract", lambda: extractor.extract(text))
    work.settle()        # wait for everything (end of a chat, or an evaluation between turns)
    work.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("lmgauge.context")


@dataclass
class Job:
    name: str
    turn: int
    future: Future[Any]
    ms: float | None = None  # time the job ran (not the time it waited in the queue)


@dataclass
class Background:
    """A one-thread queue of a conversation's background jobs, and what they cost."""

    jobs: list[Job] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # failures since the last `take_warnings`

    def __post_init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, name: str, turn: int, fn: Callable[[], Any]) -> Job:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmgauge-memory")
        job = Job(name, turn, Future())

        def run() -> Any:
            t0 = time.perf_counter()
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - background work never fails a turn
                with self._lock:
                    self.warnings.append(f"background {name} (turn {turn}) failed: {exc}")
                log.warning(self.warnings[-1])
                return None
            finally:
                job.ms = (time.perf_counter() - t0) * 1000

        job.future = self._pool.submit(run)
        self.jobs.append(job)
        return job

    def pending(self) -> list[Job]:
        return [j for j in self.jobs if not j.future.done()]

    def settle(self) -> float:
        """Wait for every submitted job; the milliseconds waited."""
        t0 = time.perf_counter()
        for job in list(self.jobs):
            job.future.result()
        return (time.perf_counter() - t0) * 1000

    def take_warnings(self) -> list[str]:
        with self._lock:
            out, self.warnings = self.warnings, []
        return out

    def close(self) -> None:
        """Finish the queued jobs (memories are not lost at exit) and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
