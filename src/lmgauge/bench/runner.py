"""Benchmark runs: every model x prompt x repetition (`run_bench`), and the context sweep
(`run_sweep`). Both measure through `Client.chat_stream`, the code path every user's request
takes, so a figure here is a figure a user gets; the harness adds nothing inside the timed
region (benchmarks/harness_overhead.py checks that against a bare llama.cpp loop).

The rules (DESIGN.md): warmup requests are excluded; temperature 0 and a fixed seed; prefix
caching defeated by a unique nonce opening every prompt (unless `allow_cache`); every request
kept as a raw Sample; a request that fails is an error row and the run goes on; Ctrl-C ends the
run early with everything measured so far kept (status "interrupted").
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ..client import Client
from ..errors import EngineError, InvalidOptionError, LmgaugeError, RequestCancelled
from ..models import ModelRef, file_sha256, inspect_gguf
from ..sizing import estimate
from ..store import RequestRecord
from ..types import Message, Options, Result
from .machine import EngineProcess, describe_machine, engine_process, engine_version
from .metrics import fit_cost_curve, percentile
from .prompts import BenchPrompt, sized_prompt
from .results import Run, RunStore, Sample

Progress = Callable[[str, int, int], None]  # (what is running, requests done, requests planned)
OnSample = Callable[[Sample], None]

CACHE_NONCE = "bench"  # the fixed "nonce" of --allow-cache: identical prompts, so the cache hits


@dataclass
class BenchConfig:
    models: list[str]
    prompts: list[BenchPrompt]
    reps: int = 5
    warmup: int = 1
    num_predict: int = 128
    num_ctx: int | None = None
    allow_cache: bool = False
    seed: int = 42
    options: dict[str, Any] = field(default_factory=dict)  # -o key=value; overrides the above
    max_consecutive_errors: int = 3  # then the model's remaining requests are skipped

    def validate(self) -> None:
        if not self.models:
            raise InvalidOptionError("name at least one model to benchmark")
        if not self.prompts:
            raise InvalidOptionError("no prompts to benchmark")
        _check_counts(reps=self.reps, warmup=self.warmup, num_predict=self.num_predict, num_ctx=self.num_ctx)
        Options.from_dict(self.request_options(self.prompts[0]))  # a typo in -o fails now, not per request

    def request_options(self, prompt: BenchPrompt | None = None) -> dict[str, Any]:
        cap = prompt.num_predict if prompt and prompt.num_predict else None
        base: dict[str, Any] = {
            "temperature": 0,
            "seed": self.seed,
            "num_predict": min(self.num_predict, cap) if cap else self.num_predict,
        }
        if self.num_ctx:
            base["num_ctx"] = self.num_ctx
        return {**base, **self.options}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["prompts"] = [
            {"name": p.name, "kind": p.kind, "num_predict": p.num_predict, "messages": p.messages} for p in self.prompts
        ]
        out["request_options"] = self.request_options()
        return out


def _check_counts(**values: int | None) -> None:
    minimum = {"reps": 1, "warmup": 0, "num_predict": 1, "num_ctx": 16, "requests": 1}
    for name, value in values.items():
        if value is not None and value < minimum[name]:
            flag = "--" + name.replace("_", "-")
            raise InvalidOptionError(f"{flag} must be at least {minimum[name]} (got {value})")


# --- one request ---------------------------------------------------------------------------------


def timed_request(
    client: Client,
    model: str,
    messages: list[dict[str, str]],
    options: dict[str, Any],
    cancel: threading.Event | None = None,
) -> Result:
    """One streamed chat request exactly as a user's goes (Client.chat_stream): the client clock
    is stamped by the Client itself, the engine's clock comes back in the Result."""
    stream = client.chat_stream(model, messages, options=options)
    try:
        for chunk in stream:
            if chunk.done and chunk.result is not None:
                return chunk.result
            if cancel is not None and cancel.is_set():
                raise RequestCancelled("cancelled")
    finally:
        stream.close()  # early exit cancels the request in the engine
    raise EngineError("the engine's stream ended without a result")


def measure(
    client: Client,
    messages: list[dict[str, str]],
    options: dict[str, Any],
    cancel: threading.Event | None = None,
    **sample: Any,
) -> tuple[Sample, Result | None]:
    """timed_request for sample["model"] as a Sample; any failure becomes an error (or cancel)
    row, never an abort. `sample` holds the Sample's identifying fields (run_id, model, ...)."""
    try:
        result = timed_request(client, sample["model"], messages, options, cancel)
    except RequestCancelled:
        return Sample(**sample, status="cancel", error="cancelled"), None
    except LmgaugeError as exc:
        return Sample(**sample, status="error", error=str(exc)), None
    except Exception as exc:  # an engine bug or an unexpected server answer: still a row
        return Sample(**sample, status="error", error=f"{type(exc).__name__}: {exc}"), None
    return Sample.from_result(result, **sample), result


def nonce(allow_cache: bool) -> str:
    return CACHE_NONCE if allow_cache else uuid.uuid4().hex[:8]


# --- recording -----------------------------------------------------------------------------------


class Recorder:
    """Numbers the samples of a run, keeps each in the run, the store and the request log as
    soon as it is measured (so an interrupted run loses nothing), and calls the hook."""

    def __init__(self, run: Run, runs: RunStore | None, on_sample: OnSample | None):
        self.run, self.runs, self.on_sample = run, runs, on_sample
        self._lock = threading.Lock()

    def add(self, sample: Sample) -> Sample:
        with self._lock:
            sample.seq = len(self.run.samples)
            self.run.samples.append(sample)
            if self.runs is not None:
                self.runs.add_sample(sample)
                if sample.status in ("ok", "error"):
                    self.runs.store.log_request(_request_record(sample, self.run))
        if self.on_sample is not None:
            self.on_sample(sample)
        return sample


def _request_record(s: Sample, run: Run) -> RequestRecord:
    return RequestRecord(
        model=s.model,
        source="bench",
        status=s.status,
        engine=run.models.get(s.model, {}).get("engine"),
        error=s.error,
        done_reason=s.done_reason,
        prompt_tokens=s.prompt_tokens,
        cached_tokens=s.cached_tokens,
        output_tokens=s.output_tokens,
        ttft_ms=s.ttft_ms,
        tpot_ms=s.tpot_ms,
        e2e_ms=s.e2e_ms,
        prefill_tps=s.prefill_tps,
        decode_tps=s.decode_tps,
        load_ms=s.load_ms,
        extra={"run_id": s.run_id, "seq": s.seq},
    )


@contextmanager
def lifecycle(run: Run, runs: RunStore | None) -> Iterator[None]:
    """Store the run when it starts and when it ends; Ctrl-C ends it as "interrupted" (the
    caller gets the run back and writes what was measured); any other error as "failed"."""
    if runs is not None:
        runs.begin(run)
    try:
        yield
        run.status = "complete"
    except KeyboardInterrupt:
        run.status = "interrupted"
    except BaseException:
        run.status = "failed"
        raise
    finally:
        run.finished = time.time()
        if runs is not None:
            runs.finish(run)


# --- what is known about a model -----------------------------------------------------------------


def describe_model(client: Client, ref: ModelRef, num_ctx: int | None, runs: RunStore | None) -> dict[str, Any]:
    """Engine, version, file and hash, window, and the memory estimate (embedded models)."""
    out: dict[str, Any] = {
        "engine": ref.engine,
        "target": ref.target,
        "source": ref.source,
        "url": ref.url,
        "engine_version": engine_version(ref),
    }
    if ref.engine == "llamacpp":
        from ..engines.llamacpp import LlamaCppEngine

        info = inspect_gguf(ref.target)
        engine = client.engine(ref)
        assert isinstance(engine, LlamaCppEngine)
        window = num_ctx or engine.default_num_ctx(ref.target)
        out.update(
            gguf=info.summary(),
            num_ctx=window,
            file_size=info.file_size,
            file_sha256=runs.sha256(ref.target) if runs else file_sha256(ref.target),
            parallel=client.settings.parallel,
            kv_type=client.settings.kv_type,
            threads=client.settings.threads or _default_threads(),
        )
        estimate = memory_estimate(info, window, client.settings.kv_type, client.settings.parallel)
        if estimate is not None:
            out["estimate"] = estimate
    else:
        out["num_ctx"] = num_ctx
        try:
            out["details"] = client.show(ref.name).details
        except LmgaugeError:
            pass
    return out


def _default_threads() -> int:
    from ..engines.llamacpp import default_threads

    return default_threads()


def memory_estimate(info: Any, num_ctx: int, kv_type: str, parallel: int) -> dict[str, Any] | None:
    """sizing.estimate for this window, as a dict (None if the model is outside its rules)."""
    try:
        return estimate(info, num_ctx, kv_type=kv_type, n_parallel=parallel).to_dict()
    except LmgaugeError:
        return None


def memory_report(proc: EngineProcess, rss_before: int | None) -> dict[str, Any]:
    rss = proc.rss()
    return {
        "process": proc.label,
        "pid": proc.pid,
        "rss_before_bytes": rss_before,
        "rss_bytes": rss,
        "peak_rss_bytes": proc.peak_rss(),
        "rss_growth_bytes": rss - rss_before if rss is not None and rss_before is not None else None,
    }


def loaded_details(client: Client, ref: ModelRef) -> dict[str, Any] | None:
    for m in client.loaded():
        if m.path == ref.target or m.name == ref.target:
            return {"size_bytes": m.size_bytes, "context_length": m.context_length, **m.details}
    return None


# --- lmgauge bench -------------------------------------------------------------------------------


def run_bench(
    client: Client,
    config: BenchConfig,
    runs: RunStore | None = None,
    progress: Progress | None = None,
    on_sample: OnSample | None = None,
) -> Run:
    """Every model x prompt x rep after `warmup` excluded rounds; returns the Run (status
    "complete", or "interrupted" after Ctrl-C with the samples measured so far)."""
    config.validate()
    refs = {m: client.resolve(m) for m in config.models}  # an unknown model fails before anything runs
    run = Run(id=Run.new_id(), kind="bench", config=config.to_dict(), machine=describe_machine())
    recorder = Recorder(run, runs, on_sample)
    per_model = len(config.prompts) * (config.warmup + config.reps)
    total, done = per_model * len(config.models), 0
    with lifecycle(run, runs):
        for index, model in enumerate(config.models):
            ref = refs[model]
            proc = engine_process(ref)
            rss_before = proc.rss()
            info = run.models[model] = describe_model(client, ref, config.num_ctx, runs)
            plan = [(p, -1) for _ in range(config.warmup) for p in config.prompts]
            plan += [(p, r) for r in range(config.reps) for p in config.prompts]  # interleaved: drift hits all
            failures, last_error = 0, ""
            for prompt, rep in plan:
                label = f"{model} · {prompt.name} · " + ("warmup" if rep < 0 else f"rep {rep + 1}/{config.reps}")
                if progress:
                    progress(label, done, total)
                done += 1
                base: dict[str, Any] = dict(
                    run_id=run.id, seq=0, model=model, prompt=prompt.name, rep=rep, t_start_s=time.time() - run.started
                )
                if failures >= config.max_consecutive_errors:
                    recorder.add(
                        Sample(
                            **base,
                            status="skipped",
                            error=f"skipped after {failures} consecutive failures: {last_error}",
                        )
                    )
                    continue
                sample, _ = measure(
                    client, prompt.with_nonce(nonce(config.allow_cache)), config.request_options(prompt), **base
                )
                sample.engine_rss_bytes = proc.rss()
                if sample.load_ms and "load_ms" not in info:
                    info["load_ms"] = sample.load_ms  # the cold load, paid by the first request
                if sample.status == "ok":
                    failures = 0
                    if rep < 0:
                        continue  # a warmup: excluded
                else:
                    failures, last_error = failures + 1, sample.error or ""
                recorder.add(sample)
            info["memory"] = memory_report(proc, rss_before)
            info["loaded"] = loaded_details(client, ref)
            following = config.models[index + 1 :]
            if ref.engine == "llamacpp" and following and all(refs[m].target != ref.target for m in following):
                client.engine(ref).unload(ref.target)  # the next model's memory is its own
        if progress:
            progress("done", total, total)
    return run


# --- lmgauge bench --ctx-sweep -------------------------------------------------------------------


@dataclass
class SweepConfig:
    model: str
    points: list[int]  # filled-context sizes (prompt tokens, template included)
    reps: int = 5
    warmup: int = 1
    num_predict: int = 128
    num_ctx: int | None = None  # default: the largest point + num_predict, rounded up to 256
    seed: int = 42
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "models": [self.model]}


def parse_token_counts(text: str) -> list[int]:
    """'256,512,1k,2k,4k' -> [256, 512, 1024, 2048, 4096] (k = 1024), sorted, unique."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = 1024 if part.endswith("k") else 1
        try:
            value = float(part.removesuffix("k")) * scale
        except ValueError:
            raise InvalidOptionError(f"--ctx-sweep: {part!r} is not a token count (e.g. 256,512,1k,2k,4k)") from None
        if value < 16 or value != int(value):
            raise InvalidOptionError(f"--ctx-sweep: {part!r} must be a whole number of tokens >= 16")
        out.append(int(value))
    if len(set(out)) < 3:
        raise InvalidOptionError("--ctx-sweep needs at least 3 context sizes to fit a cost curve")
    return sorted(set(out))


def token_counter(client: Client, ref: ModelRef) -> Callable[[list[dict[str, str]]], int]:
    """The exact templated prompt length (embedded engine), else the server's tokenizer on the
    text plus a small template allowance, else ~4 characters per token. The sweep records the
    prompt length the engine reports, so an estimate here only moves a point slightly."""
    if ref.engine == "llamacpp":
        from ..engines.llamacpp import LlamaCppEngine

        engine = client.engine(ref)
        assert isinstance(engine, LlamaCppEngine)
        return lambda ms: len(engine.chat_tokens(ref.target, [Message.from_dict(m) for m in ms]))
    try:
        client.tokenize(ref.name, "probe")
        return lambda ms: sum(len(client.tokenize(ref.name, m["content"])) + 4 for m in ms) + 3
    except LmgaugeError:
        return lambda ms: sum(len(m["content"]) // 4 + 4 for m in ms) + 3


def context_limit(client: Client, ref: ModelRef) -> int | None:
    if ref.engine == "llamacpp":
        return inspect_gguf(ref.target).n_ctx_train or None
    try:
        details = client.show(ref.name).details
    except LmgaugeError:
        return None
    for key in ("n_ctx_train", "context_length"):
        if isinstance(details.get(key), int):
            return details[key]
    return None


def run_sweep(
    client: Client,
    config: SweepConfig,
    runs: RunStore | None = None,
    progress: Progress | None = None,
    on_sample: OnSample | None = None,
) -> Run:
    """Prefill time, TTFT, decode speed and KV memory at each filled-context size, one model
    load for the whole sweep (the window fits the largest point), then the fitted cost curve."""
    _check_counts(reps=config.reps, warmup=config.warmup, num_predict=config.num_predict, num_ctx=config.num_ctx)
    ref = client.resolve(config.model)
    limit = context_limit(client, ref)
    largest = max(config.points)
    need = largest + config.num_predict
    window = config.num_ctx or _round_up(need + 16, 256)
    if limit:
        window = min(window, limit)
        if need > limit:
            raise InvalidOptionError(
                f"--ctx-sweep point {largest} + --num-predict {config.num_predict} exceeds {config.model}'s "
                f"trained context of {limit} tokens; the largest point can be {limit - config.num_predict}"
            )
    if need > window:
        raise InvalidOptionError(
            f"--ctx {window} is too small for the sweep point {largest} plus "
            f"--num-predict {config.num_predict}; use --ctx {_round_up(need, 256)} or more"
        )
    options = {
        "temperature": 0,
        "seed": config.seed,
        "num_predict": config.num_predict,
        "num_ctx": window,
        **config.options,
    }
    Options.from_dict(options)
    config.num_ctx = window
    count = token_counter(client, ref)
    sized_prompt(largest, count, nonce="probe")  # the model can fill the largest point, or fail now
    run = Run(
        id=Run.new_id(),
        kind="sweep",
        config={**config.to_dict(), "request_options": options},
        machine=describe_machine(),
    )
    recorder = Recorder(run, runs, on_sample)
    total = config.warmup + config.reps * len(config.points)
    done = 0
    with lifecycle(run, runs):
        proc = engine_process(ref)
        rss_before = proc.rss()
        info = run.models[config.model] = describe_model(client, ref, window, runs)
        plan = [(largest, -1)] * config.warmup + [(n, r) for r in range(config.reps) for n in config.points]
        for n, rep in plan:
            if progress:
                progress(f"{config.model} · {n} tokens · " + ("warmup" if rep < 0 else f"rep {rep + 1}"), done, total)
            done += 1
            messages, _ = sized_prompt(n, count, nonce=nonce(False))  # exact length with this request's nonce
            sample, _ = measure(
                client,
                messages,
                options,
                run_id=run.id,
                seq=0,
                model=config.model,
                prompt=f"ctx-{n}",
                rep=rep,
                ctx=n,
                t_start_s=time.time() - run.started,
            )
            sample.engine_rss_bytes = proc.rss()
            if sample.load_ms and "load_ms" not in info:
                info["load_ms"] = sample.load_ms
            if rep < 0 and sample.status == "ok":
                continue
            recorder.add(sample)
        info["memory"] = memory_report(proc, rss_before)
        info["loaded"] = loaded_details(client, ref)
        if progress:
            progress("done", total, total)
    run.analysis = analyze_sweep(run, ref)
    if runs is not None:
        runs.finish(run)
    return run


def _round_up(n: int, step: int) -> int:
    return int(math.ceil(n / step) * step)


def analyze_sweep(run: Run, ref: ModelRef | None = None) -> dict[str, Any]:
    """Per point medians, the fitted prefill and TTFT cost curves, the theoretical attention
    term for comparison, and the decode slowdown with depth."""
    ok = [s for s in run.samples if s.status == "ok"]
    points = []
    for n in sorted({s.ctx for s in run.samples if s.ctx}):
        at = [s for s in ok if s.ctx == n]
        point: dict[str, Any] = {"ctx": n, "n": len(at)}
        for name in (
            "prompt_tokens",
            "cached_tokens",
            "engine_prefill_ms",
            "ttft_ms",
            "decode_tps",
            "tpot_ms",
            "engine_tpot_ms",
            "prefill_tps",
            "engine_rss_bytes",
        ):
            point[name] = percentile([getattr(s, name) for s in at], 50)
        points.append(point)
    out: dict[str, Any] = {"points": points}
    evaluated = [(s.prompt_tokens or 0) - (s.cached_tokens or 0) for s in ok]
    for name, values in (("prefill", [s.engine_prefill_ms for s in ok]), ("ttft", [s.ttft_ms for s in ok])):
        try:
            fit = fit_cost_curve(evaluated if name == "prefill" else [s.prompt_tokens for s in ok], values)
        except ValueError:
            continue
        entry = fit.to_dict()
        largest = max(p["prompt_tokens"] or 0 for p in points)
        entry["at_largest"] = {
            "tokens": largest,
            "ms": fit.predict(largest),
            "quadratic_share": fit.quadratic_share_at(largest),
        }
        out[f"{name}_fit"] = entry
    model_info = run.models.get(run.config.get("model", ""), {})
    gguf = model_info.get("gguf")
    path = ref.target if ref is not None and ref.engine == "llamacpp" else model_info.get("target")
    if gguf and path:
        info = inspect_gguf(path)
        ratio = attention_ratio(info)
        out["theory"] = {
            "attention_per_linear": ratio,
            "explanation": "if time followed FLOPs, the n^2 coefficient would be b x this ratio: attention "
            "MACs per token pair (n_head x head_dim) / weight MACs per token per layer",
        }
        if "prefill_fit" in out:
            b, c = out["prefill_fit"]["b"], out["prefill_fit"]["c"]
            out["theory"]["c_theory"] = b * ratio
            out["theory"]["c_measured_over_theory"] = c / (b * ratio) if b * ratio else None
        kv = []
        for p in points:
            est = memory_estimate(
                info, max(int(p["prompt_tokens"] or p["ctx"]), 16), model_info.get("kv_type", "f16"), 1
            )
            kv.append(est["kv_bytes"] if est else None)
        for p, k in zip(points, kv, strict=True):
            p["kv_bytes"] = k
    tpot = [(s.prompt_tokens, t) for s in ok if s.prompt_tokens is not None and (t := s.engine_tpot_ms or s.tpot_ms)]
    if len({n for n, _ in tpot}) >= 2:
        import numpy as np

        slope, intercept = np.polyfit([n for n, _ in tpot], [t for _, t in tpot], 1)
        out["decode_fit"] = {"ms_per_token_at_0": float(intercept), "ms_per_token_per_1k_ctx": float(slope * 1024)}
    return out


def attention_ratio(info: Any) -> float:
    """Attention multiply-adds per (query, key) token pair over weight multiply-adds per token,
    per layer: prefill of n tokens costs ~ n x L x W (weights) + n^2/2 x L x 2 x H x d (QK^T and
    AV, causal), so its n^2 coefficient is the linear one times (H x d) / W."""
    n_embd, n_head, n_kv = info.n_embd, info.n_head, info.n_head_kv
    d_k, d_v = info.head_dim_k, info.head_dim_v
    n_ff = info.metadata.get(f"{info.architecture}.feed_forward_length", 4 * n_embd)
    if isinstance(n_ff, list):
        n_ff = max(n_ff)
    weights = n_embd * n_head * d_k + n_embd * n_kv * (d_k + d_v) + n_head * d_v * n_embd + 3 * n_embd * n_ff
    return n_head * (d_k + d_v) / 2 / weights
