"""Load tests: many requests at once, through the same Client and clock as `lmgauge bench`.

Two ways to offer load, at several levels each:
  closed loop  `concurrency` users, each sending its next request when the last one ends
               (throughput as a function of how many are in flight);
  open loop    requests arrive at `rate` per second, Poisson (exponential gaps, seeded), whether
               or not earlier ones have finished (latency under a given arrival rate; the queue
               grows without bound past saturation, which is what this shows).

Each level is bounded by a request count and/or a duration; requests still running when a
level's time is up get `grace_s` more, then are cancelled (counted, not timed). Requests are
plain threads calling `Client.chat_stream`: the embedded engine decodes up to
`settings.parallel` of them in one batch; remote servers get real concurrent HTTP streams.

Per level: request throughput, output tok/s, TTFT/TPOT/ITL/E2E percentiles, error rate, and
goodput under an SLO. Across levels: the saturation point (metrics.saturation_index).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from ..client import Client
from ..errors import InvalidOptionError
from ..types import Options
from .machine import describe_machine, engine_process
from .metrics import goodput, pooled_itl, saturation_index, summarize
from .prompts import BenchPrompt
from .results import Run, RunStore, Sample
from .runner import (
    OnSample,
    Progress,
    Recorder,
    describe_model,
    lifecycle,
    loaded_details,
    measure,
    memory_report,
    nonce,
)

# --slo names -> the Sample field each bounds.
SLO_METRICS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2e": "e2e_ms", "itl": "itl_ms"}


@dataclass
class LoadConfig:
    model: str
    prompts: list[BenchPrompt]
    concurrency: list[int] | None = None  # closed loop levels
    rates: list[float] | None = None  # open loop levels (requests per second)
    requests: int | None = None  # per level
    duration_s: float | None = None  # per level
    num_predict: int = 128
    num_ctx: int | None = None
    warmup: int = 1
    seed: int = 42
    allow_cache: bool = False
    slo: dict[str, float] = field(default_factory=lambda: {"ttft_ms": 500.0, "tpot_ms": 50.0})
    options: dict[str, Any] = field(default_factory=dict)
    grace_s: float = 30.0
    max_in_flight: int = 256  # open loop: threads sending at once

    def validate(self) -> None:
        if bool(self.concurrency) == bool(self.rates):
            raise InvalidOptionError("give either --concurrency (closed loop) or --rate (open loop)")
        if self.concurrency and any(c < 1 for c in self.concurrency):
            raise InvalidOptionError("--concurrency levels must be >= 1")
        if self.rates and any(r <= 0 for r in self.rates):
            raise InvalidOptionError("--rate levels must be > 0 requests per second")
        if self.requests is None and self.duration_s is None:
            self.requests = 20
        if self.requests is not None and self.requests < 1:
            raise InvalidOptionError("--requests must be at least 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise InvalidOptionError("--duration must be positive")
        if self.num_predict < 1:
            raise InvalidOptionError("--num-predict must be at least 1")
        Options.from_dict(self.request_options(self.prompts[0]))

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency else "open"

    def levels(self) -> list[tuple[str, int | None, float | None]]:
        if self.concurrency:
            return [(f"c={c}", c, None) for c in self.concurrency]
        return [(f"rate={r:g}", None, r) for r in self.rates or []]

    def request_options(self, prompt: BenchPrompt) -> dict[str, Any]:
        n = min(self.num_predict, prompt.num_predict) if prompt.num_predict else self.num_predict
        base: dict[str, Any] = {"temperature": 0, "seed": self.seed, "num_predict": n}
        if self.num_ctx:
            base["num_ctx"] = self.num_ctx
        return {**base, **self.options}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["prompts"] = [{"name": p.name, "kind": p.kind, "num_predict": p.num_predict} for p in self.prompts]
        out["models"] = [self.model]
        out["mode"] = self.mode
        out["request_options"] = self.request_options(self.prompts[0])
        return out


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft=500ms,tpot=50ms' -> {"ttft_ms": 500.0, "tpot_ms": 50.0} (units ms or s)."""
    if not text:
        return {"ttft_ms": 500.0, "tpot_ms": 50.0}
    out = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name.strip() not in SLO_METRICS:
            raise InvalidOptionError(
                f"--slo {part!r}: write name=value with name one of {', '.join(SLO_METRICS)}, e.g. ttft=500ms,tpot=50ms"
            )
        value = value.strip().lower()
        scale = 1000.0 if value.endswith("s") and not value.endswith("ms") else 1.0
        try:
            out[SLO_METRICS[name.strip()]] = float(value.removesuffix("ms").removesuffix("s")) * scale
        except ValueError:
            raise InvalidOptionError(f"--slo {part!r}: {value!r} is not a duration like 500ms or 2s") from None
    return out


def parse_levels(text: str, kind: type) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise InvalidOptionError(f"load levels must be comma-separated {what}, e.g. 1,2,4,8") from None
    if not values:
        raise InvalidOptionError("give at least one load level")
    return sorted(set(values))


def run_load(
    client: Client,
    config: LoadConfig,
    runs: RunStore | None = None,
    progress: Progress | None = None,
    on_sample: OnSample | None = None,
) -> Run:
    """Every level in turn; returns the Run with per-level results and the saturation point in
    `run.analysis` (also after Ctrl-C, from the requests that finished)."""
    config.validate()
    ref = client.resolve(config.model)
    run = Run(id=Run.new_id(), kind="load", config=config.to_dict(), machine=describe_machine())
    recorder = Recorder(run, runs, on_sample)
    levels = config.levels()
    planned = (config.requests or 0) * len(levels)
    state = {"done": 0}
    walls: dict[str, float] = {}  # level -> seconds from its start to its last completion
    with lifecycle(run, runs):
        proc = engine_process(ref)
        rss_before = proc.rss()
        info = run.models[config.model] = describe_model(client, ref, config.num_ctx, runs)
        for i in range(config.warmup):  # loads the model; excluded
            prompt = config.prompts[i % len(config.prompts)]
            if progress:
                progress(f"{config.model} · warmup", 0, planned)
            sample, _ = measure(
                client,
                prompt.with_nonce(nonce(config.allow_cache)),
                config.request_options(prompt),
                run_id=run.id,
                seq=0,
                model=config.model,
                prompt=prompt.name,
                rep=-1,
            )
            if sample.load_ms:
                info["load_ms"] = sample.load_ms
            if sample.status != "ok":
                recorder.add(sample)
        for label, concurrency, rate in levels:
            tick = _ticker(progress, label, config, planned, state)
            level = _Level(client, config, run, recorder, label, proc, walls, tick)
            if concurrency:
                level.closed_loop(concurrency)
            else:
                assert rate is not None  # a level is a concurrency or a rate
                level.open_loop(rate)
        info["memory"] = memory_report(proc, rss_before)
        info["loaded"] = loaded_details(client, ref)
    run.analysis = analyze_load(run, walls)
    if runs is not None:
        runs.finish(run)
    return run


def _ticker(progress: Progress | None, label: str, config: LoadConfig, planned: int, state: dict[str, int]):
    lock = threading.Lock()

    def tick() -> None:
        with lock:
            state["done"] += 1
            if progress:
                progress(f"{config.model} · {label}", state["done"], planned)

    if progress:
        progress(f"{config.model} · {label}", state["done"], planned)
    return tick


class _Level:
    """One load level: sends its requests, records each Sample as it ends, and keeps the wall
    time from the level's start to its last completion (for throughput)."""

    def __init__(
        self,
        client: Client,
        config: LoadConfig,
        run: Run,
        recorder: Recorder,
        label: str,
        proc: Any,
        walls: dict[str, float],
        tick: Any,
    ):
        self.client, self.config, self.run, self.recorder, self.label = client, config, run, recorder, label
        self.proc, self.walls, self.tick = proc, walls, tick
        self.cancel = threading.Event()
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + config.duration_s if config.duration_s else None
        walls[label] = 0.0

    def send(self, index: int, scheduled: float | None = None) -> None:
        prompt = self.config.prompts[index % len(self.config.prompts)]
        messages = prompt.with_nonce(nonce(self.config.allow_cache))
        sent = time.perf_counter()
        sample, _ = measure(
            self.client,
            messages,
            self.config.request_options(prompt),
            self.cancel,
            run_id=self.run.id,
            seq=0,
            model=self.config.model,
            prompt=prompt.name,
            rep=index,
            level=self.label,
            t_start_s=sent - self.t0,
        )
        end = time.perf_counter() - self.t0
        if scheduled is not None:
            sample.queue_delay_ms = (sent - scheduled) * 1000
        sample.engine_rss_bytes = self.proc.rss()
        with self.lock:
            self.walls[self.label] = max(self.walls[self.label], end)
        self.recorder.add(sample)
        self.tick()

    def closed_loop(self, concurrency: int) -> None:
        """`concurrency` workers, each sending a request as soon as its previous one ends."""
        issued = [0]

        def worker(finished: threading.Event) -> None:
            try:
                while not self.cancel.is_set():
                    with self.lock:
                        if self.config.requests is not None and issued[0] >= self.config.requests:
                            return
                        if self.deadline is not None and time.perf_counter() >= self.deadline:
                            return
                        index = issued[0]
                        issued[0] += 1
                    self.send(index)
            finally:
                finished.set()

        # Workers say they are done with an Event, not by join(): on CPython 3.11 a join() that
        # Ctrl-C interrupts marks the thread stopped while it still runs, and the request it was
        # cutting short would be stored after the run had returned.
        done = [threading.Event() for _ in range(concurrency)]
        for i, finished in enumerate(done):
            threading.Thread(target=worker, args=(finished,), name=f"lmgauge-load-{i}", daemon=True).start()
        try:
            while not all(e.is_set() for e in done):
                self._cancel_if_overdue()
                for e in done:
                    e.wait(0.1)  # short steps, so Ctrl-C is heard
        except KeyboardInterrupt:
            self.cancel.set()
            for e in done:
                e.wait()
            raise

    def open_loop(self, rate: float) -> None:
        """Poisson arrivals at `rate` per second (seeded: the same schedule on every run)."""
        pool = ThreadPoolExecutor(max_workers=self.config.max_in_flight, thread_name_prefix="lmgauge-load")
        futures = []
        try:
            for index, offset in enumerate(poisson_arrivals(rate, self.config.seed)):
                at = self.t0 + offset
                if self.config.requests is not None and index >= self.config.requests:
                    break
                if self.deadline is not None and at >= self.deadline:
                    break
                delay = at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(self.send, index, at))
            while not all(f.done() for f in futures):
                self._cancel_if_overdue()
                time.sleep(0.05)
        except KeyboardInterrupt:
            self.cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _cancel_if_overdue(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline + self.config.grace_s:
            self.cancel.set()


def poisson_arrivals(rate: float, seed: int) -> Iterator[float]:
    """Arrival times (seconds from the start) of a Poisson process: independent exponential
    gaps with mean 1/rate, from a seeded generator, so every run offers the same schedule."""
    rng = random.Random(seed)
    at = 0.0
    while True:
        at += rng.expovariate(rate)
        yield at


# --- analysis ------------------------------------------------------------------------------------


def level_summary(
    label: str,
    concurrency: int | None,
    rate: float | None,
    samples: list[Sample],
    elapsed_s: float,
    slo: dict[str, float],
) -> dict[str, Any]:
    """One load level: throughput over the level's wall time (first send -> last completion)."""
    ok = [s for s in samples if s.status == "ok"]
    out_tokens = sum(s.output_tokens or 0 for s in ok)
    slo_rows = [{"status": s.status, **{m: _worst(s, m) for m in slo}} for s in samples]
    entry: dict[str, Any] = {
        "level": label,
        "concurrency": concurrency,
        "rate": rate,
        "requests": len(samples),
        "ok": len(ok),
        "errors": sum(s.status == "error" for s in samples),
        "cancelled": sum(s.status == "cancel" for s in samples),
        "empty": sum(not s.output_tokens for s in ok),
        "duration_s": elapsed_s,
        "throughput_rps": len(ok) / elapsed_s if elapsed_s > 0 else None,
        "output_tps": out_tokens / elapsed_s if elapsed_s > 0 else None,
        "error_rate": (len(samples) - len(ok)) / len(samples) if samples else None,
        "goodput_rps": goodput(slo_rows, elapsed_s, slo) if elapsed_s > 0 else None,
        "slo_attained": (sum(_meets(r, slo) for r in slo_rows) / len(samples)) if samples else None,
    }
    for name in ("ttft_ms", "tpot_ms", "e2e_ms", "queue_delay_ms"):
        entry[name] = summarize([getattr(s, name) for s in ok]).to_dict()
    entry["itl_ms"] = summarize(pooled_itl([s.itl_ms for s in ok])).to_dict()
    return entry


def _worst(sample: Sample, metric: str) -> float | None:
    """An SLO on ITL bounds a request's worst gap; the others are one value per request."""
    if metric == "itl_ms":
        return max(sample.itl_ms) if sample.itl_ms else None
    return getattr(sample, metric)


def _meets(row: dict[str, Any], slo: dict[str, float]) -> bool:
    return row["status"] == "ok" and all(row.get(m) is None or row[m] <= bound for m, bound in slo.items())


def analyze_load(run: Run, walls: dict[str, float]) -> dict[str, Any]:
    """Per level (in the order run) its summary; across levels, where throughput stops rising
    while latency climbs (E2E p50). `walls`: each level's wall time in seconds."""
    config = run.config
    levels = []
    for label, seconds in walls.items():
        samples = [s for s in run.samples if s.level == label]
        concurrency = int(label[2:]) if label.startswith("c=") else None
        rate = float(label[5:]) if label.startswith("rate=") else None
        levels.append(level_summary(label, concurrency, rate, samples, seconds, config["slo"]))
    throughput = [lv["throughput_rps"] for lv in levels]
    latency = [lv["e2e_ms"]["p50"] for lv in levels]
    index = saturation_index(throughput, latency)
    best = max(range(len(levels)), key=lambda i: throughput[i] or 0) if levels else None
    out: dict[str, Any] = {
        "mode": config["mode"],
        "slo": config["slo"],
        "walls": walls,
        "levels": levels,
        "saturation": None,
    }
    if index is not None:
        nxt = levels[index + 1]
        out["saturation"] = {
            "level": levels[index]["level"],
            "throughput_rps": throughput[index],
            "reason": f"going to {nxt['level']} added {(throughput[index + 1] / throughput[index] - 1):+.0%} "
            f"throughput while E2E p50 rose {(latency[index + 1] / latency[index] - 1):+.0%}",
        }
    elif levels:
        out["saturation_note"] = (
            f"not saturated up to {levels[-1]['level']}: throughput still rising (or latency flat); try higher levels"
        )
    if best is not None:
        out["peak"] = {
            "level": levels[best]["level"],
            "throughput_rps": throughput[best],
            "output_tps": levels[best]["output_tps"],
        }
    return out


def resolve_url_target(url: str, model: str | None, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
    """A server URL -> (the Client model name, settings overrides). Ollama is recognised by
    /api/tags, an OpenAI-compatible server by /v1/models; the model defaults to the server's
    only one."""
    import httpx

    from ..errors import EngineUnavailableError

    base = url.rstrip("/")

    def listing(endpoint: str, key: str) -> list[dict[str, Any]] | None:
        try:
            response = httpx.get(endpoint, timeout=timeout)
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(f"cannot reach {url}: {exc}") from None
        try:
            data = response.json() if response.status_code == 200 else None
        except ValueError:
            return None
        return data.get(key) if isinstance(data, dict) and isinstance(data.get(key), list) else None

    if not base.endswith("/v1"):
        models = listing(f"{base}/api/tags", "models")
        if models is not None:
            names = [n for m in models if (n := m.get("name") or m.get("model"))]
            return f"ollama:{_pick(model, names, url)}", {"ollama_host": base}
    api = base if base.endswith("/v1") else f"{base}/v1"
    models = listing(f"{api}/models", "data")
    if models is not None:
        return f"openai:{_pick(model, [i for m in models if (i := m.get('id'))], url)}@{api}", {}
    raise EngineUnavailableError(f"{url} answers neither /api/tags (Ollama) nor /v1/models (OpenAI-compatible)")


def _pick(model: str | None, names: list[str], url: str) -> str:
    if model:
        return model  # the server will say if it does not have it
    if len(names) == 1:
        return names[0]
    if not names:
        raise InvalidOptionError(f"the server at {url} lists no models; pass --model NAME")
    raise InvalidOptionError(f"the server at {url} has several models ({', '.join(names[:8])}); pass --model NAME")
