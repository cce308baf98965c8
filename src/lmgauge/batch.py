"""`lmgauge batch`: answer a JSONL file of prompts into a JSONL file of results, resumably.

Input, one item per line (blank lines ignored):
    "Why is the sky blue?"                                       a bare string: the prompt
    {"id": "q1", "prompt": "...", "system": "...", "options": {...}, "format": "json"}
    {"id": "q2", "messages": [{"role": "user", "content": "..."}]}
An item without an id is called `line-<n>` (its line number), so ids stay stable as long as the
file is not reordered; give ids if it may be.

Output, one result per input item, in completion order:
    {"id", "model", "status": "ok"|"error", "content", "done_reason", "error", "tier", "cached",
     "timings": {...}}

Resume: results already in the output file are kept and their items skipped; items that ended
in an error are tried again (unless `retry_errors=False`). Each result records what was asked
(`"request"`: the model name, the item's effective options and format, and a hash of its
messages); a result asked differently (another model, other options, an edited prompt) is never
passed off as an answer to this run: the run is refused, or with `force=True` those items are
answered again. The file is rewritten once at the
start without duplicates or a line cut off by a kill, then appended to and flushed after every
item, so killing the process loses at most the items in flight.

Concurrency: N worker threads share one Client. For an embedded model the caller should build the
Client with `parallel=N`, so the N requests share decode steps (continuous batching) instead of
queueing for one slot.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidOptionError, LmgaugeError
from .types import Message, Result


@dataclass
class BatchItem:
    id: str
    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    format: Any = None


@dataclass
class BatchSummary:
    total: int  # items in the input
    skipped: int  # already done before this run
    ok: int  # answered in this run
    errors: int  # failed in this run
    interrupted: bool = False

    @property
    def done(self) -> int:
        return self.skipped + self.ok + self.errors


def read_items(path: Path, system: str | None = None) -> list[BatchItem]:
    """Parse the input file; a bad line is an error that names it (nothing runs on bad input)."""
    if not path.is_file():
        raise InvalidOptionError(f"no such prompts file: {path}")
    items: list[BatchItem] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise InvalidOptionError(
                    f"{path}:{n} is not valid JSON ({exc}); each line must be a JSON string or object"
                ) from None
            item = _item(data, n, system, f"{path}:{n}")
            if item.id in seen:
                raise InvalidOptionError(
                    f"{path}:{n}: the id {item.id!r} is used twice; ids must be unique "
                    "so results can be matched and resumed"
                )
            seen.add(item.id)
            items.append(item)
    if not items:
        raise InvalidOptionError(f"{path} has no prompts")
    return items


def _item(data: Any, n: int, system: str | None, where: str) -> BatchItem:
    if isinstance(data, str):
        data = {"prompt": data}
    if not isinstance(data, dict):
        raise InvalidOptionError(f"{where}: expected a string or an object with 'prompt' or 'messages'")
    item_id = str(data.get("id") if data.get("id") is not None else f"line-{n}")
    system = data.get("system", system)
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list) or not messages:
            raise InvalidOptionError(f"{where}: 'messages' must be a non-empty list")
        for m in messages:
            Message.from_dict(m)  # validates roles, with a clear error
    elif isinstance(data.get("prompt"), str):
        messages = [{"role": "user", "content": data["prompt"]}]
    else:
        raise InvalidOptionError(f"{where}: needs a 'prompt' string or a 'messages' list")
    if system and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidOptionError(f"{where}: 'options' must be an object")
    return BatchItem(item_id, messages, options, data.get("format"))


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The results already written (the last one per id). A line that is not valid JSON can only
    be the one a kill cut off mid-write; it is dropped, and its item runs again."""
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "id" in record:
                done[str(record["id"])] = record
    return done


def request_of(
    item: BatchItem, model: str, base_options: dict[str, Any] | None = None, fmt: Any = None
) -> dict[str, Any]:
    """What a result answers: the model name asked for, the item's effective options and format,
    and a hash of its messages (so an edited prompt with the same id is not a match)."""
    messages = json.dumps(item.messages, sort_keys=True, ensure_ascii=False)
    return {
        "model": model,
        "options": {**(base_options or {}), **item.options},
        "format": item.format if item.format is not None else fmt,
        "messages_sha256": hashlib.sha256(messages.encode()).hexdigest()[:16],
    }


def _differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
        return "it was written without a record of its model and options"
    parts = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in ("model", "options", "format") if old.get(k) != new[k]]
    if old.get("messages_sha256") != new["messages_sha256"]:
        parts.append("the prompt changed")
    return ", ".join(parts)


def result_record(
    item: BatchItem,
    model: str,
    result: Result | None = None,
    error: str | None = None,
    tier: str | None = None,
    cached: bool = False,
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {"id": item.id, "model": model, "status": "ok" if error is None else "error"}
    if request is not None:
        record["request"] = request
    if result is not None:
        t = result.timings
        record.update(
            model=result.model,
            content=result.content,
            done_reason=result.done_reason,
            engine=result.engine,
            timings={
                "ttft_ms": t.ttft_ms,
                "tpot_ms": t.tpot_ms,
                "e2e_ms": t.e2e_ms,
                "prompt_tokens": t.prompt_tokens,
                "cached_tokens": t.cached_tokens,
                "output_tokens": t.output_tokens,
                "decode_tps": t.decode_tps,
            },
        )
    if error is not None:
        record["error"] = error
    if tier is not None:
        record["tier"] = tier
    if cached:
        record["cached"] = True
    return record


Answer = Callable[[BatchItem], tuple[Result, str | None, bool]]  # -> (result, tier, cached)


def run_batch(
    items: list[BatchItem],
    out_path: Path,
    answer: Answer,
    model: str,
    *,
    concurrency: int = 1,
    retry_errors: bool = True,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    request: Callable[[BatchItem], dict[str, Any]] | None = None,
    force: bool = False,
    out_name: str = "the output",
) -> BatchSummary:
    """Answer every item not already answered in `out_path`, `concurrency` at a time.

    `answer(item)` does the work (a plain model call, a routed one, through the cache...); an
    LmgaugeError it raises becomes an error record and the batch goes on. `on_done` sees each
    record as it is written (for a progress bar); setting `stop` ends the run after the items
    in flight (what Ctrl-C does).

    `request(item)` says what this run asks for each item (see `request_of`); a kept result asked
    differently raises InvalidOptionError before anything runs, or with `force` is answered again."""
    if concurrency < 1:
        raise InvalidOptionError("--concurrency must be at least 1")
    request = request or (lambda item: request_of(item, model))
    asked = {item.id: request(item) for item in items}
    keep = resumable(items, out_path, request, retry_errors=retry_errors, force=force, out_name=out_name)
    _rewrite(out_path, keep.values())
    pending = [item for item in items if item.id not in keep]
    summary = BatchSummary(total=len(items), skipped=len(items) - len(pending), ok=0, errors=0)
    stop = stop or threading.Event()

    def work(item: BatchItem) -> dict[str, Any]:
        try:
            result, tier, cached = answer(item)
            return result_record(item, model, result, tier=tier, cached=cached, request=asked[item.id])
        except LmgaugeError as exc:
            return result_record(item, model, error=str(exc), request=asked[item.id])

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="lmgauge-batch")
    with out_path.open("a", encoding="utf-8") as out:
        queue = iter(pending)
        running: set[Future[dict[str, Any]]] = set()
        try:
            while True:
                while not stop.is_set() and len(running) < concurrency:
                    item = next(queue, None)
                    if item is None:
                        break
                    running.add(pool.submit(work, item))
                if not running:
                    break
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    record = future.result()
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()  # a killed process keeps every line written so far
                    if record["status"] == "ok":
                        summary.ok += 1
                    else:
                        summary.errors += 1
                    if on_done is not None:
                        on_done(record)
        except BaseException:
            # Ctrl-C or a bug: the items in flight are abandoned (they run again on resume).
            stop.set()
            summary.interrupted = True
            raise
        finally:
            pool.shutdown(wait=not summary.interrupted, cancel_futures=True)
            out.flush()
            os.fsync(out.fileno())
    summary.interrupted = summary.interrupted or stop.is_set() and summary.done < summary.total
    return summary


def resumable(
    items: list[BatchItem],
    out_path: Path,
    request: Callable[[BatchItem], dict[str, Any]],
    *,
    retry_errors: bool = True,
    force: bool = False,
    out_name: str = "the output",
) -> dict[str, dict[str, Any]]:
    """The results in `out_path` this run keeps (by id): those asked exactly as this run asks.
    A result asked differently is refused (InvalidOptionError naming the difference) unless
    `force`, which drops it so its item is answered again."""
    asked = {item.id: request(item) for item in items}
    keep = {i: r for i, r in read_results(out_path).items() if r.get("status") == "ok" or not retry_errors}
    stale = {
        i: _differences(r.get("request"), asked[i])
        for i, r in keep.items()
        if i in asked and r.get("request") != asked[i]
    }
    if stale and not force:
        first = next(iter(stale))
        raise InvalidOptionError(
            f"{out_name} already holds {len(stale)} result(s) asked differently (item {first!r}: {stale[first]}); "
            "write to another file with -O, or pass --force to answer them again with this run's settings"
        )
    return {i: r for i, r in keep.items() if i not in stale}


def _rewrite(path: Path, records: Any) -> None:
    """Replace the output with exactly these records (atomically: a kill leaves old or new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
