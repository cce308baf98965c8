"""The request log, written off the request path, with a bound on what a crash can lose.

A request hands its RequestRecord to `LogWriter.put` (a queue append and a clock read, no I/O);
one thread commits whatever has accumulated in a single transaction. So logging never adds a
disk write to a request's latency, and under load hundreds of rows share one commit instead of
paying one each (measured: per-row commits took a quarter of the gateway's CPU at 1,000
requests/s). SQLite in WAL mode keeps every committed row if the process is killed; rows still
queued at that moment are lost: that is the price of not waiting for the disk.

The bound: every row is committed within `linger_s` (50 ms) of its request ending. Sleeping
50 ms after the first row and then committing, as this writer used to, did not keep it: waking
up under load (the event loop holds the GIL), building the rows and committing take time too,
and rows that arrive during one commit wait for the next linger, so at ~500 requests/s rows sat
up to 63 ms unwritten. Now each batch is due `linger_s` after its *oldest* row was queued, and
the writer starts it early by the longest time recent batches took from the planned start to
the end of their commit (`lag_s`, over the last `LAG_WINDOW` batches). `max_age_s` records the
oldest row age any commit has seen: the real loss window, which benchmarks/reqlog_loss.py prints.
"""

from __future__ import annotations

import collections
import logging
import queue
import sqlite3
import threading
import time

from ..store import RequestRecord, Store

log = logging.getLogger("lmgauge.gateway")

MAX_BATCH = 2000
LAG_WINDOW = 32  # batches over which the writer remembers how long a commit took to land


class LogWriter:
    def __init__(self, store: Store, linger_s: float = 0.05):
        self.store = store
        self.linger_s = linger_s
        self._queue: queue.SimpleQueue[tuple[float, RequestRecord] | None] = queue.SimpleQueue()
        self._lags: collections.deque[float] = collections.deque([0.0], maxlen=LAG_WINDOW)
        self.written = 0
        self.max_age_s = 0.0  # the oldest a row has been when its commit ended
        self.ages: collections.deque[float] = collections.deque(maxlen=10_000)  # that, per recent batch
        self._thread = threading.Thread(target=self._run, name="lmgauge-request-log", daemon=True)
        self._thread.start()

    @property
    def lag_s(self) -> float:
        return max(self._lags)

    def put(self, record: RequestRecord) -> None:
        self._queue.put((time.monotonic(), record))

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            stopping = first is None
            batch: list[RequestRecord] = []
            oldest = start = time.monotonic()
            if first is not None:
                oldest = first[0]
                batch.append(first[1])
                # Start so that the commit lands linger_s after the oldest row, as recent ones did.
                start = max(oldest + self.linger_s - min(self.lag_s, self.linger_s), start)
                wait = start - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # let a batch accumulate: one commit for many rows
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item[1])
            if not batch:
                continue
            try:
                self.store.log_requests(batch)
                self.written += len(batch)
            except (sqlite3.Error, OSError) as exc:  # the log must never take the gateway down
                log.warning("could not write %d request log rows to %s: %s", len(batch), self.store.path, exc)
            end = time.monotonic()
            self._lags.append(max(0.0, end - start))  # waking up late + building + committing
            self.max_age_s = max(self.max_age_s, end - oldest)
            self.ages.append(end - oldest)
