"""`lmgauge memory list|search|edit|forget`: the long-term memory `lmgauge chat --memory` keeps."""

from __future__ import annotations

from typing import Annotated

import typer

from ..client import Client
from ..errors import InvalidOptionError
from ..store import Store
from .console import err, out
from .context import open_memory
from .options import JsonFlag
from .render import memory_table

AllFlag = Annotated[bool, typer.Option("--all", help="Include superseded and forgotten memories (history).")]


def memory_list(
    all_: AllFlag = False,
    kind: Annotated[str | None, typer.Option(help="Only this kind: fact, preference or decision.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List current memories, newest first."""
    from ..context.memory import Memory

    with Client() as client:
        items = Memory(Store(client.settings.db_path)).list(None if all_ else "current", kind)
    if json_out:
        out.print_json(data=[m.to_dict() for m in items])
    elif not items:
        err.print("no memories yet (`lmgauge chat --memory` collects them)")
    else:
        out.print(memory_table(items))


def memory_search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many results.")] = 10,
    all_: Annotated[bool, typer.Option("--all", help="Search superseded and forgotten memories too.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Search memories with hybrid search (BM25 + embeddings), as recall does."""
    with Client() as client:
        hits = open_memory(client).search(query, k=k, status=None if all_ else "current")
    if json_out:
        out.print_json(data=[{**m.to_dict(), "score": s} for m, s in hits])
    elif not hits:
        err.print("nothing found")
    else:
        out.print(memory_table([m for m, _ in hits], [s for _, s in hits]))


def memory_edit(
    memory_id: Annotated[int, typer.Argument(help="The memory's id (see `lmgauge memory list`).")],
    value: Annotated[str | None, typer.Option(help="The corrected value.")] = None,
    key: Annotated[str | None, typer.Option(help="The corrected key.")] = None,
    kind: Annotated[str | None, typer.Option(help="fact, preference or decision.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Correct a memory in place."""
    if value is None and key is None and kind is None:
        raise InvalidOptionError("give at least one of --value, --key or --kind")
    with Client() as client:
        item = open_memory(client).edit(memory_id, key=key, value=value, kind=kind)
    if json_out:
        out.print_json(data=item.to_dict())
    else:
        out.print(memory_table([item]))


def memory_forget(
    memory_ids: Annotated[list[int], typer.Argument(help="Ids of the memories to forget.")],
    purge: Annotated[bool, typer.Option("--purge", help="Also delete every forgotten memory for good.")] = False,
) -> None:
    """Forget memories: never recalled again (kept as 'forgotten' until --purge)."""
    from ..context.memory import Memory

    with Client() as client:
        memory = Memory(Store(client.settings.db_path))
        for memory_id in memory_ids:
            item = memory.forget(memory_id)
            out.print(f"forgot {item.id}: {item.text}")
        if purge:
            out.print(f"purged {memory.purge()} forgotten memories")
