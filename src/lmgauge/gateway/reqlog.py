"""The request log, written off the request path.

A request hands its RequestRecord to `LogWriter.put` (a queue append, no I/O); one thread drains
the queue and inserts whatever has accumulated in a single transaction. So logging never adds a
disk write to a request's latency, and under load many rows share one commit. SQLite in WAL mode
keeps every committed row if the process is killed; rows still in the queue at that moment are
lost, which is the price of not waiting for the disk (at most one batch, a few ms of traffic).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading

from ..store import RequestRecord, Store

log = logging.getLogger("lmgauge.gateway")

MAX_BATCH = 512


class LogWriter:
    def __init__(self, store: Store):
        self.store = store
        self._queue: queue.SimpleQueue[RequestRecord | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lmgauge-request-log", daemon=True)
        self._thread.start()
        self.written = 0

    def put(self, record: RequestRecord) -> None:
        self._queue.put(record)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            batch = [] if first is None else [first]
            stopping = first is None
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            if batch:
                try:
                    self.store.log_requests(batch)
                    self.written += len(batch)
                except (sqlite3.Error, OSError) as exc:  # the log must never take the gateway down
                    log.warning("could not write %d request log rows to %s: %s", len(batch), self.store.path, exc)
