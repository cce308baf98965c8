"""What answering commands (`run`, `route ask`) keep and print of an answer: the request-log row
in the store (like the gateway's) and the answer as JSON."""

from __future__ import annotations

from typing import Any

from ..client import Client
from ..store import Store
from ..types import Result
from .console import err


def result_json(result: Result) -> dict[str, Any]:
    return {
        "model": result.model,
        "engine": result.engine,
        "content": result.content,
        "done_reason": result.done_reason,
        "timings": result.timings.to_dict(),
    }


def log_result(client: Client, result: Result, source: str = "cli") -> None:
    """Keep every CLI request in the store, like the gateway does (best effort)."""
    import sqlite3

    from ..store import RequestRecord

    try:
        Store(client.settings.db_path).log_request(RequestRecord.from_result(result, source))
    except (sqlite3.Error, OSError) as exc:
        err.print(f"warning: could not write the request log at {client.settings.db_path}: {exc}")


def client_store(client: Client) -> Store:
    return Store(client.settings.db_path)
