"""What does a long conversation cost per turn, with context management and without?

Plays the same synthetic conversation (lmgauge.context.synthetic) through `Conversation` in
three modes:
  - compaction: a small window (--num-ctx, default 1024), running summary (strategy summarize);
  - compaction + memory: the same window, strategy hybrid with long-term memory (what
    `lmgauge chat --memory` does): each turn also carries the memories recalled for it, which are
    new tokens every turn;
  - without: keep everything, in a window big enough to hold --turns turns (--full-ctx, 8192).
Every turn is answered by the model (greedy, a few tokens). Then, at turn 1 and at the last turn,
time to first token is measured --reps times in two conditions:
  - warm: as in a real chat, the engine's prefix cache holds the previous turn (the previous
    turn's request is replayed first, untimed, so the cache is in the state the chat leaves it;
    at turn 1 there is no previous turn, so nothing is cached);
  - cold: the prefix cache is defeated (a unique marker at the start of the system prompt), so
    the whole prompt is evaluated: the cost of the prompt's size alone.
Prints prompt tokens and TTFT p50 at turn 1 and turn N for both modes, and the ratio N/1
(target with compaction, warm: <= 1.2x), plus the turns where a compaction happened and what
they cost (the summary and the cache miss after it).

    flock /tmp/lmgauge-cpu.lock python benchmarks/context_cost.py [--model smollm2] [--turns 50] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from lmgauge import Client, load_settings
from lmgauge.context import Conversation, Memory
from lmgauge.context.synthetic import conversation
from lmgauge.embedding import WordLlamaEmbedder
from lmgauge.store import Store
from lmgauge.types import Message

SYSTEM = "You are a helpful assistant. Answer briefly."


def ttft(client: Client, model: str, messages: list[Message], options: dict) -> tuple[float, int, int]:
    """(TTFT ms on the client clock, prompt tokens, cached tokens) of one request."""
    result = client.chat(model, messages, options=options)
    t = result.timings
    return t.ttft_ms or float("nan"), t.prompt_tokens, t.cached_tokens


def with_marker(messages: list[Message]) -> list[Message]:
    """The same prompt with a short unique marker in front (a few tokens, so the prompt's size
    barely changes): nothing after it is in the prefix cache."""
    first = messages[0]
    return [Message(first.role, f"[{uuid.uuid4().hex[:6]}] {first.content}")] + messages[1:]


def play(client: Client, model: str, turns: int, num_ctx: int, strategy: str, memory: bool, options: dict):
    """Play the conversation; keep each turn's request (the prompt sent and its answer)."""
    tmp = tempfile.mkdtemp(prefix="lmgauge-bench-")
    store = Store(Path(tmp) / "bench.db")
    cfg = client.settings.context.model_copy(update={"strategy": strategy})
    mem = Memory(store, WordLlamaEmbedder()) if memory else None
    conv = Conversation(
        client, model, system=SYSTEM, num_ctx=num_ctx, config=cfg, memory=mem, store=store, options=options
    )
    synth = conversation(0, turns=max(turns, 12))
    played = []
    for i, t in enumerate(synth.turns[:turns], start=1):
        turn = conv.send(t.user)
        played.append(
            {
                "turn": i,
                "messages": turn.prepared.messages,
                "prompt_tokens": turn.result.timings.prompt_tokens,
                "cached": turn.result.timings.cached_tokens,
                "ttft_ms": turn.result.timings.ttft_ms,
                "compaction_ms": turn.compaction.ms if turn.compaction else None,
            }
        )
        print(
            f"  {strategy:>9} turn {i:3d}: {turn.budget.used:5d} prompt tokens "
            f"({turn.result.timings.cached_tokens:5d} cached), TTFT {turn.result.timings.ttft_ms:7.1f} ms"
            + (f"  compacted in {turn.compaction.ms:.0f} ms" if turn.compaction else ""),
            file=sys.stderr,
        )
    return played, conv


def measure(client: Client, model: str, played: list[dict], turn: int, reps: int, options: dict) -> dict:
    target = played[turn - 1]
    before = played[turn - 2] if turn >= 2 else None
    warm, cold = [], []
    for _ in range(reps):
        if before is not None:  # put the cache where the chat left it after the previous turn
            client.chat(model, before["messages"], options=options)
            warm.append(ttft(client, model, target["messages"], options))
        else:  # at turn 1 nothing of the conversation can be in the cache yet
            warm.append(ttft(client, model, with_marker(target["messages"]), options))
        cold.append(ttft(client, model, with_marker(target["messages"]), options))
    return {
        "turn": turn,
        "prompt_tokens": target["prompt_tokens"],
        "warm_ttft_ms": statistics.median(w[0] for w in warm),
        "warm_cached": statistics.median(w[2] for w in warm),
        "cold_ttft_ms": statistics.median(c[0] for c in cold),
        "cold_cached": statistics.median(c[2] for c in cold),
        "warm_samples": [round(w[0], 2) for w in warm],
        "cold_samples": [round(c[0], 2) for c in cold],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--num-ctx", type=int, default=1024, help="window with compaction")
    ap.add_argument("--full-ctx", type=int, default=8192, help="window without compaction")
    ap.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    ap.add_argument("--save", help="also write the JSON report to this file")
    args = ap.parse_args()

    settings = load_settings(keep_alive=-1)
    settings.parallel = max(settings.parallel, 2)  # as `lmgauge chat` does: extraction has its own slot
    options = {"temperature": 0, "seed": 1, "num_predict": 16}
    report = {
        "model": args.model,
        "turns": args.turns,
        "reps": args.reps,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
    }
    with Client(settings) as client:
        report["model_path"] = client.resolve(args.model).target
        modes = [
            ("compaction (summarize)", "summarize", args.num_ctx, False),
            ("compaction + memory (hybrid)", "hybrid", args.num_ctx, True),
            ("without (keep everything)", "none", args.full_ctx, False),
        ]
        for name, strategy, ctx, memory in modes:
            print(f"{name}: playing {args.turns} turns (window {ctx})", file=sys.stderr)
            played, conv = play(client, args.model, args.turns, ctx, strategy, memory, options)
            opts = {**options, "num_ctx": ctx}
            first = measure(client, args.model, played, 1, args.reps, opts)
            last = measure(client, args.model, played, args.turns, args.reps, opts)
            compacted = [p for p in played if p["compaction_ms"] is not None]
            after = [played[p["turn"] - 1]["ttft_ms"] for p in compacted]
            report[name] = {
                "strategy": strategy,
                "num_ctx": ctx,
                "turn_1": first,
                f"turn_{args.turns}": last,
                "warm_ratio": last["warm_ttft_ms"] / first["warm_ttft_ms"],
                "cold_ratio": last["cold_ttft_ms"] / first["cold_ttft_ms"],
                "chat_ttft_ms_p50": statistics.median(p["ttft_ms"] for p in played),
                "compactions": [p["turn"] for p in compacted],
                "compaction_ms_mean": statistics.fmean(p["compaction_ms"] for p in compacted) if compacted else None,
                "ttft_ms_on_compaction_turns_p50": statistics.median(after) if after else None,
                "prompt_tokens_per_turn": [p["prompt_tokens"] for p in played],
            }
    if args.save:
        Path(args.save).write_text(json.dumps(report, indent=2, default=str))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    n = args.turns
    print(
        f"\n{args.model}: TTFT at turn 1 vs turn {n} ({args.reps} reps each, p50, client clock; "
        f"{report['machine']['cores']} cores)"
    )
    print(
        f"{'mode':<30}{'window':>7}{'tokens t1':>10}{'t' + str(n):>7}{'cached':>7}   "
        f"{'warm t1 ms':>10}{'t' + str(n):>8}{'ratio':>7}   {'cold t1 ms':>10}{'t' + str(n):>8}{'ratio':>7}"
    )
    for name in [m[0] for m in modes]:
        r = report[name]
        a, b = r["turn_1"], r[f"turn_{n}"]
        print(
            f"{name:<30}{r['num_ctx']:>7}{a['prompt_tokens']:>10}{b['prompt_tokens']:>7}{b['warm_cached']:>7.0f}   "
            f"{a['warm_ttft_ms']:>10.1f}{b['warm_ttft_ms']:>8.1f}{r['warm_ratio']:>6.2f}x   "
            f"{a['cold_ttft_ms']:>10.1f}{b['cold_ttft_ms']:>8.1f}{r['cold_ratio']:>6.2f}x"
        )
    for name in [m[0] for m in modes]:
        r = report[name]
        if r["compactions"]:
            print(
                f"{name}: {len(r['compactions'])} compactions (turns {r['compactions']}), "
                f"{r['compaction_ms_mean']:.0f} ms each on average, TTFT p50 on those turns "
                f"{r['ttft_ms_on_compaction_turns_p50']:.1f} ms (the compacted prefix is not cached yet)"
            )
    print(
        "warm: the prefix cache as the chat leaves it; cold: nothing cached (the prompt's size alone). "
        "target: compaction, warm ratio <= 1.2x"
    )


if __name__ == "__main__":
    main()
