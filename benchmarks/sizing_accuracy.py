"""How close is `lmgauge.sizing.estimate` to the memory the embedded engine really takes?

For each model and window (num_ctx 512, 2048, 8192 and the model's trained maximum), a fresh
Python process imports lmgauge, measures its own RSS, loads the model through the engine
(`LlamaCppEngine.acquire`, i.e. the `Runner` lmgauge serves with), runs one request whose
prompt fills a whole ubatch (n_batch tokens), measures RSS again, and reports the growth next
to the estimate. A fresh process per point, because freed memory is not reliably returned to
the OS (glibc keeps heap fragments), so a second load in the same process would measure less.

What RSS contains here, and why this is the right comparison:
  - VmRSS = RssAnon + RssFile (+ RssShmem, 0 here). The weights are an mmap of the GGUF file:
    file-backed pages, counted in RssFile once mapped and resident. llama.cpp's loader maps
    with MAP_POPULATE on Linux and unmaps what holds no tensor data (measured: RssFile grows by
    the tensor data, not the file size, right after loading, before any decode); a decode
    touches no further weight pages. They are clean
    page-cache pages: another process mapping the same file shares them, and under memory
    pressure the kernel may drop them, at the price of re-reading them from disk on every
    token. A process that must not thrash needs them resident, so sizing counts them.
  - Anonymous memory: the KV cache (llama.cpp zeroes it at creation: resident at once), the
    CPU backend's repacked copy of Q4 weights (written at load), the logits buffer and the
    compute buffer. The compute buffer is reserved for llama.cpp's worst case (logits for every
    token of a ubatch), but only the pages that executed graphs use become resident. The
    engine asks for logits of one token per sequence, so what it touches is the activations of
    a full ubatch, which is why the request here sends a prompt of at least n_batch tokens; a
    "short decode" alone would touch a fraction of it and flatter the estimate.
  - The attention mask grows with the KV cells in use (n_kv x n_ubatch f16 per cache). The
    estimate assumes a full window (the worst step a long conversation reaches); filling a
    32k window on two CPU cores takes minutes, so by default the prompt is one ubatch and
    the "as run" column shows the estimate for the cells actually in use. `--fill` fills the
    window instead.
  - The baseline is taken after imports and backend initialisation, so Python, numpy and the
    shared libraries are not counted; code pages of libllama first touched while loading are.

Usage:
  python benchmarks/sizing_accuracy.py [--model PATH ...] [--ctx 512,2048,8192,max]
         [--kv-type f16] [--parallel 1] [--n-batch 512] [--fill] [--json]
Without --model: the embedded SmolLM2 plus every *.gguf in $LMGAUGE_EXTRA_MODELS (default
/work/models), if that folder exists. Run under `flock /tmp/lmgauge-cpu.lock` on shared machines.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

MiB = 1 << 20
DEFAULT_EXTRA_MODELS = "/work/models"
NUM_PREDICT = 4
# Log lines of llama.cpp kept for the JSON record (its own figures for each buffer).
LOG_KEEP = re.compile(r"buffer size|KV buffer|cells|n_ctx_seq\s*=|n_ubatch\s*=")


# --- worker: one model, one window, in a fresh process -----------------------------------------


def _rss() -> dict[str, int]:
    """This process's resident memory, from /proc (psutil's rss is VmRSS; the split into
    anonymous and file-backed pages is only in /proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1]) * 1024
    return out


class _KeepLines(logging.Handler):
    """Keeps the few llama.cpp log lines that state buffer sizes (not the thousands of others,
    which would themselves cost memory)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if LOG_KEEP.search(msg):
            self.lines.append(msg.strip())


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from lmgauge.config import Settings
    from lmgauge.engines.llamacpp import LlamaCppEngine
    from lmgauge.models import inspect_gguf
    from lmgauge.types import GenerateRequest, Options

    keep = _KeepLines()
    llama_log = logging.getLogger("lmgauge.llama")
    llama_log.setLevel(logging.DEBUG)
    llama_log.addHandler(keep)

    settings = Settings(
        kv_type=spec["kv_type"],
        parallel=spec["parallel"],
        n_batch=spec["n_batch"],
        flash_attn=spec["flash_attn"],
        keep_alive=-1,
    )
    engine = LlamaCppEngine(settings)  # initialises the llama.cpp backend
    path, num_ctx = spec["path"], spec["num_ctx"]
    inspect_gguf(path)  # the header the engine reads anyway; cached, small
    # Prompt text prepared before the baseline; it is tokenized with the model's own
    # tokenizer once loaded (loading a tokenizer earlier would itself move the baseline).
    text = _prose(spec["prompt_tokens"] * 8)
    gc.collect()
    before = _rss()

    runner, _ = engine.acquire(path, Options(num_ctx=num_ctx))
    loaded = _rss()
    window = runner.n_ctx_seq
    want = min(spec["prompt_tokens"], window - NUM_PREDICT - 8)
    prompt = runner.detokenize(runner.tokenize(text)[:want])
    result = None
    request = GenerateRequest(
        model=path,
        prompt=prompt,
        raw=True,
        options=Options(num_ctx=num_ctx, num_predict=NUM_PREDICT, temperature=0, seed=0),
    )
    for chunk in engine.generate(request):
        if chunk.done:
            result = chunk.result
    after = _rss()
    engine.release(runner, None)
    assert result is not None
    record = {
        "before": before,
        "loaded": loaded,
        "after": after,
        "growth": after["VmRSS"] - before["VmRSS"],
        "prompt_tokens": result.timings.prompt_eval_tokens,
        "output_tokens": result.timings.output_tokens,
        "window": window,
        "llama_log": keep.lines,
    }
    engine.close()
    return record


def _prose(n_chars: int) -> str:
    """Varied English-like text (so a BPE tokenizer does not merge it into a few long tokens)."""
    words = (
        "the model reads every token of a long prompt and keeps its keys and values in the "
        "cache while memory grows with the window so we measure what it holds after loading "
        "weights buffers and tables of the tokenizer before answering"
    ).split()
    out, i = [], 0
    while sum(len(w) + 1 for w in out) < n_chars:
        out.append(words[(i * 7 + i // len(words)) % len(words)] + ("." if i % 13 == 12 else ""))
        i += 1
    return " ".join(out)


# --- parent: plan, run the workers, compare --------------------------------------------------


def run_point(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--_worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def default_models() -> list[str]:
    from lmgauge.models import smollm2_path

    models = [str(smollm2_path())]
    extra = Path(os.environ.get("LMGAUGE_EXTRA_MODELS", DEFAULT_EXTRA_MODELS))
    if extra.is_dir():
        models += [str(p) for p in sorted(extra.glob("*.gguf"))]
    return models


def windows(spec: str, n_ctx_train: int) -> list[int]:
    out: list[int] = []
    for item in spec.split(","):
        n = n_ctx_train if item.strip() == "max" else int(item)
        if n_ctx_train and n > n_ctx_train:
            continue
        if n not in out:
            out.append(n)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", action="append", help="GGUF path (repeatable); default: SmolLM2 + extra models")
    ap.add_argument("--ctx", default="512,2048,8192,max", help="windows to test; 'max' = trained context")
    ap.add_argument("--kv-type", default="f16", choices=("f16", "q8_0", "q4_0"))
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--flash-attn", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--fill", action="store_true", help="fill the whole window (slow) instead of one ubatch")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    if args._worker:
        print(json.dumps(worker(json.loads(args._worker))))
        return 0

    from lmgauge import sizing
    from lmgauge.models import inspect_gguf

    rows = []
    for path in args.model or default_models():
        info = inspect_gguf(path)
        for num_ctx in windows(args.ctx, info.n_ctx_train):
            est = sizing.estimate(
                info, num_ctx, args.kv_type, args.parallel, args.n_batch, flash_attn=args.flash_attn != "off"
            )
            prompt = num_ctx if args.fill else args.n_batch
            spec = {
                "path": path,
                "num_ctx": num_ctx,
                "kv_type": args.kv_type,
                "parallel": args.parallel,
                "n_batch": args.n_batch,
                "flash_attn": args.flash_attn,
                "prompt_tokens": prompt,
            }
            measured = run_point(spec)
            # The estimate for the KV cells this run actually used (the mask term is the only
            # part that depends on them): separates the formula's error from the untouched
            # worst case.
            in_use = measured["prompt_tokens"]  # the big step: the prompt's last ubatch
            used = -(-in_use // sizing.N_CTX_PAD) * sizing.N_CTX_PAD  # llama.cpp pads n_kv to 256
            caches = [min(c, used) for c in sizing.kv_cache_sizes(info, est.n_ctx, args.parallel, est.n_ubatch)]
            as_run = (
                est.total_bytes
                - est.compute_bytes
                + sizing.compute_buffer_bytes(
                    info, est.n_ubatch, caches, args.parallel, args.flash_attn != "off", args.kv_type
                )
                + sizing.work_buffer_bytes(info, est.n_ubatch)
            )
            growth = measured["growth"]
            rows.append(
                {
                    "model": Path(path).name,
                    "architecture": info.architecture,
                    "num_ctx": num_ctx,
                    "estimate": est.to_dict(),
                    "estimate_as_run": as_run,
                    "measured": measured,
                    "measured_growth": growth,
                    "error": (est.total_bytes - growth) / growth,
                    "error_as_run": (as_run - growth) / growth,
                }
            )
            if not args.json:
                if len(rows) == 1:
                    print(_header())
                print(_row(rows[-1]), flush=True)

    errors = [abs(r["error"]) for r in rows]
    summary = {
        "points": len(rows),
        "median_abs_error": statistics.median(errors),
        "max_abs_error": max(errors),
        "median_abs_error_as_run": statistics.median(abs(r["error_as_run"]) for r in rows),
        "max_abs_error_as_run": max(abs(r["error_as_run"]) for r in rows),
        "kv_type": args.kv_type,
        "parallel": args.parallel,
        "n_batch": args.n_batch,
        "flash_attn": args.flash_attn,
        "fill": args.fill,
    }
    if args.json:
        print(json.dumps({"summary": summary, "points": rows}, indent=2))
    else:
        print(
            f"\n{len(rows)} points: median |error| {summary['median_abs_error'] * 100:.1f}%, "
            f"max {summary['max_abs_error'] * 100:.1f}%  (as run: median "
            f"{summary['median_abs_error_as_run'] * 100:.1f}%, max {summary['max_abs_error_as_run'] * 100:.1f}%)"
        )
        print(
            "MiB throughout; error = (estimate - measured) / measured; 'as run' = the estimate for the "
            "KV cells the request used (the full-window estimate assumes every cell in use)."
        )
    return 0


def _header() -> str:
    return (
        f"{'model':42s} {'num_ctx':>7s} | {'weights':>8s} {'KV':>8s} {'compute':>8s} {'other':>7s} {'total':>8s}"
        f" | {'measured':>8s} {'error':>7s} | {'as run':>8s} {'error':>7s}"
    )


def _row(r: dict[str, Any]) -> str:
    e = r["estimate"]
    other = e["output_bytes"] + e["overhead_bytes"]
    return (
        f"{r['model'][:42]:42s} {r['num_ctx']:7d} | {e['weights_bytes'] / MiB:8.1f} {e['kv_bytes'] / MiB:8.1f} "
        f"{e['compute_bytes'] / MiB:8.1f} {other / MiB:7.1f} {e['total_bytes'] / MiB:8.1f}"
        f" | {r['measured_growth'] / MiB:8.1f} {r['error'] * 100:+6.1f}% | {r['estimate_as_run'] / MiB:8.1f}"
        f" {r['error_as_run'] * 100:+6.1f}%"
    )


if __name__ == "__main__":
    sys.exit(main())
