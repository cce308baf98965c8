"""`lmgauge chat` (managed context: budget, compaction, long-term memory, documents) and
`lmgauge eval context` (recall after compaction vs truncation vs keep-everything)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..client import Client
from ..config import ContextSettings, load_settings
from ..errors import InvalidOptionError, LmgaugeError
from ..store import Store
from .console import err, out
from .options import JsonFlag, OptionFlag, SystemFlag, parse_options
from .render import progress_bar, turn_report

ChatModelArg = Annotated[str, typer.Argument(help="Model name, .gguf path, ollama:NAME or openai:NAME@URL.")]
MemoryFlag = Annotated[
    bool,
    typer.Option(
        "--memory", help="Remember facts across turns and sessions (extracted by the model; see `lmgauge memory list`)."
    ),
]
DocsFlag = Annotated[
    Path | None,
    typer.Option(
        "--docs", help="A folder of documents (txt, md, code) to consult: only the relevant excerpts enter the prompt."
    ),
]
StrategyFlag = Annotated[
    str | None,
    typer.Option(
        help="When the window fills: trim, summarize, hybrid or none (refuse). Default: context.strategy (hybrid)."
    ),
]
ChatVerboseFlag = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Per turn: tokens used / window, what was compacted, recalled, loaded and remembered."
    ),
]
ChatJsonFlag = Annotated[
    bool, typer.Option("--json", help="One JSON object per turn on stdout (answer, budget, compaction, recall).")
]
ConversationIdFlag = Annotated[
    str | None, typer.Option("--id", help="Conversation id for the memory archive (default: a new one).")
]


def chat(
    model: ChatModelArg = "smollm2",
    memory: MemoryFlag = False,
    docs: DocsFlag = None,
    system: SystemFlag = None,
    strategy: StrategyFlag = None,
    verbose: ChatVerboseFlag = False,
    json_out: ChatJsonFlag = False,
    option: OptionFlag = None,
    conversation_id: ConversationIdFlag = None,
) -> None:
    """Chat with managed context: exact token budget, compaction, long-term memory, documents.

    Interactive on a terminal; with stdin from a pipe or file, each line is one message
    (`lmgauge chat smollm2 --memory < questions.txt`)."""
    from ..context.conversation import Conversation

    options = parse_options(option)
    num_ctx = options.pop("num_ctx", None)
    # A second decode slot keeps the chat's prefix cache when memory extraction or summarizing
    # run between turns (each has its own prompt): that is what keeps the time to first token flat.
    settings = load_settings()
    settings.parallel = max(settings.parallel, 2)
    with Client(settings) as client, contextlib.ExitStack() as finish:
        client.resolve(model)
        cfg = context_settings(client, strategy)
        store = Store(client.settings.db_path)
        mem, index = _memory_and_docs(client, model, cfg, memory, docs)
        conv = Conversation(
            client,
            model,
            system=system,
            num_ctx=num_ctx,
            config=cfg,
            memory=mem,
            docs=index,
            store=store,
            conversation_id=conversation_id,
            options=options,
            background=True,
        )
        finish.callback(conv.close)  # extraction and compaction queued after the last answer finish first
        scripted = not sys.stdin.isatty()
        if not scripted:
            err.print(
                f"Chatting with {model} (window {conv.window.num_ctx} tokens, strategy {cfg.strategy}"
                f"{', memory on' if memory else ''}). /bye to quit."
            )
        while (text := _read_message(scripted)) is not None:
            if text:
                _chat_turn(conv, store, text, json_out, verbose, scripted)


def context_settings(client: Client, strategy: str | None) -> ContextSettings:
    cfg = client.settings.context
    if strategy is None:
        return cfg
    if strategy not in ("trim", "summarize", "hybrid", "none"):
        raise InvalidOptionError(f"--strategy must be trim, summarize, hybrid or none, not {strategy!r}")
    return cfg.model_copy(update={"strategy": strategy})


def open_memory(client: Client) -> Any:
    from ..context.memory import Memory
    from ..embedding import make_embedder

    return Memory(Store(client.settings.db_path), make_embedder(client.settings.context.embed_model, client))


def _memory_and_docs(
    client: Client, model: str, cfg: ContextSettings, memory: bool, docs: Path | None
) -> tuple[Any, Any]:
    """The long-term memory (--memory) and the document index (--docs), each None when not asked."""
    from ..context.retrieval import DocIndex
    from ..embedding import make_embedder

    embedder = make_embedder(cfg.embed_model, client) if (memory or docs) else None
    mem = open_memory(client) if memory else None
    if docs is None:
        return mem, None
    from ..context.tokens import counter_for

    with err.status(f"indexing {docs} ..."):
        index = DocIndex.open(
            docs, counter_for(client, model), embedder, cfg.chunk_tokens, cache_dir=client.settings.home / "docs"
        )
    err.print(
        f"[dim]{len(index.documents)} documents, {len(index.chunks)} chunks indexed from {docs}"
        + (f" ({len(index.skipped)} skipped)" if index.skipped else "")
        + "[/]",
        markup=True,
    )
    return mem, index


def _read_message(scripted: bool) -> str | None:
    """The next message, stripped ('' for a blank line); None when the chat ends (EOF, /bye)."""
    try:
        line = sys.stdin.readline() if scripted else input(">>> ")
    except (EOFError, KeyboardInterrupt):
        err.print()
        return None
    if scripted and not line:
        return None
    text = line.strip()
    return None if text in ("/bye", "/exit", "/quit") else text


def _chat_turn(conv: Any, store: Store, text: str, json_out: bool, verbose: bool, scripted: bool) -> None:
    from ..store import RequestRecord

    stream = not json_out
    try:
        turn = conv.send(
            text, on_text=(lambda piece: (sys.stdout.write(piece), sys.stdout.flush())) if stream else None
        )
    except KeyboardInterrupt:
        err.print("\n(interrupted)")
        return
    except LmgaugeError as exc:
        # The turn is not lost: it is on screen (and archived when memory is on); the
        # conversation is unchanged, so the user can shorten it or retry.
        err.print(f"[bold red]error:[/] {exc}", markup=True)
        if scripted:
            sys.exit(1)
        return
    if json_out:  # one object per line (JSON Lines), so a script can read turn by turn
        sys.stdout.write(json.dumps(turn.to_dict(), default=str) + "\n")
        sys.stdout.flush()
    else:
        sys.stdout.write("\n")
    turn_report(turn, verbose)
    if turn.result is not None:
        try:
            store.log_request(RequestRecord.from_result(turn.result, "chat", compacted=turn.compaction is not None))
        except Exception as exc:  # noqa: BLE001 - the log is best effort
            err.print(f"warning: could not write the request log: {exc}")


# --- lmgauge eval context -----------------------------------------------------------------------

PLAN_NAMES = (
    "keep-everything",
    "keep-everything (same window)",
    "truncation",
    "summarize",
    "hybrid",
    "hybrid (oracle memories)",
    "hybrid (without change notes)",
    "hybrid (oracle memories without change notes)",
)

EvalModelFlag = Annotated[
    str,
    typer.Option(
        help="Model to evaluate (name, .gguf path, ollama:NAME); several, "
        "comma-separated, are evaluated in one run and compared."
    ),
]
SeedFlag = Annotated[
    int, typer.Option(help="Seed of the synthetic data (0-999: the test set; tune only on 1000 and up).")
]
TurnsFlag = Annotated[int, typer.Option(min=12, help="Turns per conversation.")]
ConversationsFlag = Annotated[int, typer.Option(min=1, help="Conversations (seed, seed+1, ...).")]
NumCtxFlag = Annotated[
    int, typer.Option(help="The managed window: small enough that the conversation must be compacted.")
]
FullCtxFlag = Annotated[
    int | None,
    typer.Option(help="Window of the keep-everything reference (default: the model's trained context, at most 8192)."),
]
StrategiesFlag = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated subset of: keep-everything, "
        "keep-everything (same window), truncation, summarize, hybrid, "
        "hybrid (oracle memories); also hybrid (without change notes), "
        "hybrid (oracle memories without change notes)."
    ),
]
AnswersFlag = Annotated[
    bool,
    typer.Option(help="Ask the model the questions (--no-answers: score only whether the answer reached the prompt)."),
]
RetrievalFlag = Annotated[bool, typer.Option(help="Run the document retrieval part.")]
AskFlag = Annotated[bool, typer.Option(help="Also evaluate the 'ask the model which documents' strategy.")]
EmbedModelFlag = Annotated[
    str | None,
    typer.Option(help="Another embedding model to compare with wordllama in retrieval (e.g. a GGUF embedding model)."),
]
EvalOutFlag = Annotated[
    Path | None, typer.Option("--output", "-O", "--out", help="Write report.json and tokens.png here.")
]


def eval_context(
    model: EvalModelFlag = "smollm2",
    seed: SeedFlag = 0,
    turns: TurnsFlag = 100,
    conversations: ConversationsFlag = 1,
    num_ctx: NumCtxFlag = 2048,
    full_ctx: FullCtxFlag = None,
    strategies: StrategiesFlag = None,
    answers: AnswersFlag = True,
    retrieval: RetrievalFlag = True,
    ask: AskFlag = True,
    embed_model: EmbedModelFlag = None,
    out_dir: EvalOutFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """Fact recall after compaction vs truncation vs keep-everything, prompt tokens per turn,
    extraction and supersession, document retrieval recall (BM25 / embeddings / hybrid)."""
    from ..context.report import print_models, print_report

    chosen = tuple(s.strip() for s in strategies.split(",")) if strategies else PLAN_NAMES[:6]
    models = [m.strip() for m in model.split(",") if m.strip()]
    unknown = [s for s in chosen if s not in PLAN_NAMES]
    if unknown:
        raise InvalidOptionError(f"unknown strategy {unknown[0]!r}; choose from: {', '.join(PLAN_NAMES)}")
    settings = load_settings()
    settings.parallel = max(settings.parallel, 2)  # the chat's prefix cache survives extraction calls
    plan = {
        "seed": seed,
        "turns": turns,
        "conversations": conversations,
        "num_ctx": num_ctx,
        "full_ctx": full_ctx,
        "strategies": chosen,
        "answer": answers,
        "retrieval": retrieval,
        "ask": ask,
    }
    with Client(settings) as client:
        reports = _evaluate_models(client, models, embed_model, plan, out_dir)
    if out_dir is not None:
        err.print(f"wrote the report(s) and token plot(s) to {out_dir}")
    if json_out:
        out.print_json(data=reports[0] if len(reports) == 1 else reports)
    else:
        for report in reports:
            print_report(report, out)
        if len(reports) > 1:
            print_models(reports, out)


def _evaluate_models(
    client: Client, models: list[str], embed_model: str | None, plan: dict[str, Any], out_dir: Path | None
) -> list[dict[str, Any]]:
    """Evaluate each model in turn under one progress display; each report is written as soon as done."""
    from ..context.evaluation import evaluate
    from ..embedding import ClientEmbedder, Embedder, wordllama_embedder

    for name in models:
        client.resolve(name)
    extra: dict[str, Embedder] | None = {embed_model: ClientEmbedder(client, embed_model)} if embed_model else None
    if embed_model:
        client.resolve(embed_model)
    reports = []
    with progress_bar(elapsed=True) as bar:
        tasks: dict[str, Any] = {}
        for name in models:

            def progress(what: str, i: int, n: int, name: str = name) -> None:
                label = f"{Path(name).name}: {what}" if len(models) > 1 else what
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=n)
                bar.update(tasks[label], completed=i + 1)

            reports.append(
                evaluate(client, name, embedder=wordllama_embedder(), extra_embedders=extra, progress=progress, **plan)
            )
            if out_dir is not None:
                _write_context_report(reports[-1], out_dir, "" if len(models) == 1 else name)
    return reports


def _write_context_report(report: dict[str, Any], out_dir: Path, model: str) -> None:
    from ..context.report import plot_tokens

    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-" + Path(model).name.removesuffix(".gguf") if model else ""
    (out_dir / f"report{suffix}.json").write_text(json.dumps(report, indent=2))
    plot_tokens(report, out_dir / f"tokens{suffix}.png")
