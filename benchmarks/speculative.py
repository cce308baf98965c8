"""Speculative decoding in the embedded engine: what it buys, where it stops paying, what it costs.

Every comparison is made in one run, on one engine, with the same prompts, alternating plain and
speculative requests (greedy, no repeat penalty, prefix reuse off so each request does all of its
own work); ratios are of the engine-clock decode rate (output tokens after the first / decode time).

  --part draft    Qwen2.5-Coder 1.5B with 0.5B drafting, on code-completion, rewrite and chat prompts:
                  decode speed-up, acceptance rate, mean accepted length, draft vs verify time.
                  Target: >= 1.5x at greedy on code/rewrite.
  --part lookup   prompt lookup on rewrite/extraction prompts (SmolLM2; --part draft has it for Qwen 1.5B).
  --part streams  1, 2 and 4 concurrent streams (parallel = 4): aggregate throughput (all output
                  tokens / wall time) with and without speculation; where it stops paying.
  --part memory   the draft model's memory: the sizing estimate against the engine process's
                  measured RSS growth when the draft model loads.

    flock /tmp/lmgauge-cpu.lock python benchmarks/speculative.py --part draft --part lookup ...

Models: ~/.cache/lmgauge-test-models (get-extra-models) or --target/--draft paths.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

from lmgauge import Client
from lmgauge.bench.machine import describe_machine
from lmgauge.models import inspect_gguf
from lmgauge.sizing import estimate, format_size

MODELS = Path(os.environ.get("LMGAUGE_TEST_MODELS", "~/.cache/lmgauge-test-models")).expanduser()
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}

CODE = [
    "Complete this Python function. Reply with code only.\n\ndef merge_sorted(a: list[int], b: list[int]) -> list[int]:\n"
    '    """Merge two sorted lists into one sorted list."""\n',
    "Write a Python class Stack with push, pop, peek and is_empty methods, with docstrings. Code only.",
]
REWRITE = [
    "Rewrite this function with type hints added, changing nothing else. Reply with code only.\n\n"
    "def area(width, height):\n    if width < 0 or height < 0:\n        raise ValueError('negative size')\n"
    "    return width * height\n\n\ndef perimeter(width, height):\n    if width < 0 or height < 0:\n"
    "        raise ValueError('negative size')\n    return 2 * (width + height)\n",
    "Rename the variable `tmp` to `total` in this code and output the whole code:\n\n"
    "def score(items):\n    tmp = 0\n    for item in items:\n        if item.valid:\n            tmp += item.points\n"
    "        else:\n            tmp -= 1\n    return tmp\n",
]
EXTRACT = [
    "Order #4821 was placed by Maria Keller (maria.keller@example.com) on 12 March 2024 for 3 items: a blue "
    "ceramic mug (12.50 EUR), a walnut cutting board (34.00 EUR) and a linen apron (19.90 EUR). Shipping to "
    "Hauptstrasse 7, 8001 Zurich.\n\nList every item with its price, one per line, copied from the text.",
]
CHAT = ["Why is the sky blue? Answer in a short paragraph.", "Give three tips for sleeping better."]


def find(name: str) -> str:
    path = MODELS / name
    if not path.exists():
        sys.exit(f"{path} is missing: run ../shared/models/get-extra-models {MODELS}")
    return str(path)


THREADS: int | None = None  # --threads


def client_for(target: str, draft: str | None, parallel: int = 1) -> Client:
    """One engine; `plain`, `lookup` and `draft` are names for the same file, speculating or not."""
    client = Client(
        parallel=parallel,
        keep_alive=-1,
        num_ctx=2048,
        prefix_cache=False,
        threads=THREADS,
        aliases={"plain": target, "lookup": target, "draft": target},
    )
    client.settings.speculative.models["lookup"] = "lookup"
    if draft:
        client.settings.speculative.models["draft"] = draft
    return client


def one(client: Client, mode: str, prompt: str, tokens: int) -> dict:
    r = client.chat(mode, [{"role": "user", "content": prompt}], options={**GREEDY, "num_predict": tokens})
    t = r.timings
    spec = t.speculation
    return {
        "mode": mode,
        "tokens": t.output_tokens,
        "decode_tps": t.decode_tps,
        "content": r.content,
        "spec": spec.to_dict() if spec else None,
    }


def compare(client: Client, modes: list[str], prompts: dict[str, list[str]], tokens: int, reps: int) -> list[dict]:
    """Alternate the modes on every prompt; print per kind the decode-rate ratio against plain."""
    for mode in reversed(modes):  # warm up; a speculating request first, so the runner has rows for drafts
        one(client, mode, "Say hi.", 8)
    rows = []
    for kind, texts in prompts.items():
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(reps):
            for text in texts:
                for mode in modes:
                    runs[mode].append(one(client, mode, text, tokens))
        plain = runs["plain"]
        same = all(a["content"] == b["content"] for m in modes[1:] for a, b in zip(plain, runs[m], strict=True))
        row = {"kind": kind, "identical_output": same}
        for mode in modes:
            rates = [x["decode_tps"] for x in runs[mode] if x["decode_tps"]]
            row[mode] = {"decode_tps": statistics.median(rates), "n": len(rates)}
            if mode != "plain":
                specs = [x["spec"] for x in runs[mode] if x["spec"]]
                drafted = sum(s["drafted"] for s in specs)
                accepted = sum(s["accepted"] for s in specs)
                steps = sum(s["steps"] for s in specs)
                row[mode].update(
                    speedup=row[mode]["decode_tps"] / row["plain"]["decode_tps"],
                    acceptance=accepted / drafted if drafted else None,
                    mean_accepted=accepted / steps if steps else None,
                    draft_s=sum(s["draft_ns"] for s in specs) / 1e9,
                    verify_s=sum(s["verify_ns"] for s in specs) / 1e9,
                    lookup_steps=sum(s.get("lookup_steps", 0) for s in specs),
                    pauses=sum(s.get("pauses", 0) for s in specs),
                )
        rows.append(row)
        line = f"  {kind:8} plain {row['plain']['decode_tps']:6.1f} tok/s"
        for mode in modes[1:]:
            r = row[mode]
            acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.0%}"
            mean = "-" if r["mean_accepted"] is None else f"{r['mean_accepted']:.2f}"
            line += (
                f" | {mode} {r['decode_tps']:6.1f} tok/s = {r['speedup']:4.2f}x, accepted {acc}, "
                f"{mean}/step, draft {r['draft_s']:.1f}s vs verify {r['verify_s']:.1f}s"
                + (f", {r['lookup_steps']} step(s) copied by lookup" if r["lookup_steps"] else "")
                + (f", paused {r['pauses']}x" if r["pauses"] else "")
            )
        print(line + f" | identical greedy output: {same}", flush=True)
    return rows


def part_draft(args) -> dict:
    target, draft = (
        args.target or find("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        args.draft or find("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    )
    print(f"draft model: {Path(draft).name} drafting for {Path(target).name}, {args.tokens} tokens per answer")
    with client_for(target, draft) as client:
        return {
            "target": target,
            "draft": draft,
            "rows": compare(
                client,
                ["plain", "draft", "lookup"],
                {"code": CODE, "rewrite": REWRITE, "chat": CHAT[:1]},
                args.tokens,
                args.reps,
            ),
        }


def part_lookup(args) -> dict:
    out = {}
    for name in args.lookup_models.split(","):
        target = Client().resolve(name).target
        print(f"prompt lookup on {Path(target).name}, {args.tokens} tokens per answer")
        with client_for(target, None) as client:
            out[Path(target).name] = compare(
                client,
                ["plain", "lookup"],
                {"rewrite": REWRITE, "extract": EXTRACT, "chat": CHAT[:1]},
                args.tokens,
                args.reps,
            )
    return out


def concurrent(client: Client, mode: str, prompts: list[str], tokens: int) -> dict:
    results: list = [None] * len(prompts)

    def go(i: int) -> None:
        results[i] = client.chat(
            mode, [{"role": "user", "content": prompts[i]}], options={**GREEDY, "num_predict": tokens}
        )

    t0 = time.perf_counter()
    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = sum(r.timings.output_tokens for r in results)
    specs = [r.timings.speculation for r in results if r.timings.speculation]
    return {
        "tokens": out,
        "wall_s": wall,
        "agg_tps": out / wall,
        "acceptance": (sum(s.accepted for s in specs) / max(sum(s.drafted for s in specs), 1)) if specs else None,
    }


def part_streams(args) -> dict:
    target = args.stream_target or Client().resolve("smollm2").target
    draft = args.stream_draft
    modes = ["plain", "lookup"] + (["draft"] if draft else [])
    prompts = REWRITE + EXTRACT + CODE + CHAT
    print(
        f"concurrent streams on {Path(target).name} (parallel = 4), {args.tokens} tokens each; "
        "aggregate = all output tokens / wall time"
    )
    rows = []
    with client_for(target, draft, parallel=4) as client:
        for mode in reversed(modes):
            concurrent(client, mode, ["Say hi."] * 2, 8)
        for n in args.streams:
            mix = [prompts[i % len(prompts)] for i in range(n)]
            row = {"streams": n}
            runs: dict[str, list[dict]] = {mode: [] for mode in modes}
            for _ in range(args.reps):  # alternating modes, so drift hits each alike
                for mode in modes:
                    runs[mode].append(concurrent(client, mode, mix, args.tokens))
            for mode in modes:  # the repetition with the median aggregate rate
                row[mode] = sorted(runs[mode], key=lambda r: r["agg_tps"])[len(runs[mode]) // 2]
            for mode in modes[1:]:
                row[mode]["speedup"] = row[mode]["agg_tps"] / row["plain"]["agg_tps"]
            rows.append(row)
            print(
                f"  {n} stream(s): plain {row['plain']['agg_tps']:6.1f} tok/s"
                + "".join(
                    f" | {m} {row[m]['agg_tps']:6.1f} tok/s = {row[m]['speedup']:4.2f}x (accepted "
                    f"{row[m]['acceptance']:.0%})"
                    for m in modes[1:]
                ),
                flush=True,
            )
    return {"target": target, "draft": draft, "rows": rows}


def part_memory(args) -> dict:
    target, draft = (
        args.target or find("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        args.draft or find("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    )
    proc = psutil.Process()
    with client_for(target, draft) as client:
        one(client, "plain", "Say hi.", 4)
        before = proc.memory_info().rss
        one(client, "draft", "Say hi.", 4)  # loads the draft model beside the target
        after = proc.memory_info().rss
        predicted = estimate(inspect_gguf(draft), 2048).total_bytes
        loaded = client.loaded()
    out = {
        "rss_growth_bytes": after - before,
        "predicted_bytes": predicted,
        "ratio": (after - before) / predicted,
        "loaded_size_bytes": [m.size_bytes for m in loaded],
    }
    print(
        f"draft model memory: sizing predicts {format_size(predicted)}, measured RSS growth "
        f"{format_size(after - before)} ({out['ratio']:.0%} of the estimate); /api/ps reports "
        f"{format_size(loaded[0].size_bytes)} for target + draft",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", action="append", choices=["draft", "lookup", "streams", "memory"])
    ap.add_argument("--target")
    ap.add_argument("--draft")
    ap.add_argument("--stream-target", help="model for --part streams (default smollm2)")
    ap.add_argument("--stream-draft", help="draft model for --part streams (default: prompt lookup only)")
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument(
        "--lookup-models",
        default="smollm2",
        help="models for --part lookup (comma-separated; --part draft measures prompt lookup on the target too)",
    )
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        help="llama.cpp threads (default: physical cores); 1 is steadier "
        "on a machine other processes keep busy (no OpenMP barrier waiting for a preempted thread)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    args.streams = [int(s) for s in args.streams.split(",")]
    load = os.getloadavg()
    print(
        f"threads: {args.threads or 'physical cores'}; machine: {psutil.cpu_count(logical=False)} cores, load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} at start (shared machine: ratios are within this run)",
        flush=True,
    )
    report = {"machine": describe_machine(), "load_at_start": load}
    parts = {"draft": part_draft, "lookup": part_lookup, "streams": part_streams, "memory": part_memory}
    for part in args.part or ["draft", "lookup", "streams", "memory"]:
        report[part] = parts[part](args)
    report["load_at_end"] = os.getloadavg()
    print(f"load average at end: {report['load_at_end'][0]:.1f}")
    if args.json:
        print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
