"""GET /metrics: Prometheus text format, through prometheus_client, one registry per app.

Counters and histograms are updated once per finished request; gauges that change all the time
(queue depth, in-flight, upstream health) and the rolling percentiles of the monitor are read
when Prometheus scrapes, by a collector, so the request path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ..monitor import Monitor, Sample

# Seconds. LLM latencies span a few ms (a cached answer) to minutes (a long generation).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)
RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    def __init__(self, monitor: Monitor, gauges: Callable[[], dict[str, Any]]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lmgauge_requests", "Requests finished, by model, API and status", ["model", "api", "status"], registry=r
        )
        self.ttft = Histogram(
            "lmgauge_ttft_seconds",
            "Time to first token (gateway clock)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "lmgauge_tpot_seconds", "Time per output token after the first", ["model"], buckets=TPOT_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "lmgauge_e2e_seconds",
            "Request arrival to last byte of the answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("lmgauge_prompt_tokens", "Prompt tokens", ["model"], registry=r)
        self.output_tokens = Counter("lmgauge_output_tokens", "Output tokens", ["model"], registry=r)
        self.context = Histogram(
            "lmgauge_context_utilization_ratio",
            "Prompt tokens / context window",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter("lmgauge_cache_hits", "Answers served from the response cache", ["model"], registry=r)
        self.compactions = Counter("lmgauge_compactions", "Requests compacted to fit the window", ["model"], registry=r)
        self.escalations = Counter(
            "lmgauge_escalations",
            "Requests to `auto` that left this tier for a larger "
            "one: its answer failed the check, or it failed with an error",
            ["tier", "reason"],
            registry=r,
        )
        self.failovers = Counter(
            "lmgauge_upstream_failovers",
            "Requests that failed on this node before their first token and were answered by another",
            ["model", "url"],
            registry=r,
        )
        # Speculative decoding (embedded engine): acceptance rate = accepted / drafted.
        self.spec_drafted = Counter(
            "lmgauge_speculative_drafted_tokens", "Tokens drafted and verified", ["model"], registry=r
        )
        self.spec_accepted = Counter(
            "lmgauge_speculative_accepted_tokens", "Drafted tokens the model accepted", ["model"], registry=r
        )
        self.spec_steps = Counter(
            "lmgauge_speculative_steps", "Verification steps (target decodes with drafts)", ["model"], registry=r
        )
        self.spec_seconds = Counter(
            "lmgauge_speculative_seconds", "Engine time drafting and verifying", ["model", "phase"], registry=r
        )
        r.register(_LiveCollector(monitor, gauges))
        self._per_model: dict[str, _ModelMetrics] = {}

    def observe(self, api: str, sample: Sample) -> None:
        model = sample.model
        self.requests.labels(model, api, sample.status).inc()
        if sample.status != "ok":
            return
        m = self._per_model.get(model)
        if m is None:  # label lookups take a lock and a hash each: do them once per model
            m = self._per_model[model] = _ModelMetrics(
                *(
                    metric.labels(model)
                    for metric in (
                        self.ttft,
                        self.tpot,
                        self.e2e,
                        self.prompt_tokens,
                        self.output_tokens,
                        self.context,
                        self.cache_hits,
                    )
                )
            )
        if sample.ttft_ms is not None:
            m.ttft.observe(sample.ttft_ms / 1000)
        if sample.tpot_ms is not None:
            m.tpot.observe(sample.tpot_ms / 1000)
        if sample.e2e_ms is not None:
            m.e2e.observe(sample.e2e_ms / 1000)
        if sample.prompt_tokens:
            m.prompt_tokens.inc(sample.prompt_tokens)
        if sample.output_tokens:
            m.output_tokens.inc(sample.output_tokens)
        if sample.context_used is not None:
            m.context.observe(sample.context_used)
        if sample.cache_hit:
            m.cache_hits.inc()
        spec = sample.speculation
        if spec is not None:
            self.spec_drafted.labels(model).inc(spec.drafted)
            self.spec_accepted.labels(model).inc(spec.accepted)
            self.spec_steps.labels(model).inc(spec.steps)
            self.spec_seconds.labels(model, "draft").inc(spec.draft_ns / 1e9)
            self.spec_seconds.labels(model, "verify").inc(spec.verify_ns / 1e9)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class _ModelMetrics:
    ttft: Any
    tpot: Any
    e2e: Any
    prompt_tokens: Any
    output_tokens: Any
    context: Any
    cache_hits: Any


class _LiveCollector(Collector):
    """Gauges read at scrape time: queue, in-flight, upstream health, rolling percentiles."""

    def __init__(self, monitor: Monitor, gauges: Callable[[], dict[str, Any]]):
        self.monitor = monitor
        self.gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.gauges()
        queued = GaugeMetricFamily("lmgauge_queue_depth", "Requests waiting for a slot", labels=["model"])
        running = GaugeMetricFamily("lmgauge_in_flight", "Requests running", labels=["model"])
        for model, g in state["models"].items():
            queued.add_metric([model], g["queued"])
            running.add_metric([model], g["in_flight"])
        yield queued
        yield running
        healthy = GaugeMetricFamily(
            "lmgauge_upstream_healthy",
            "1 if the upstream node is up (requests and test generations decide, gateway/health.py)",
            labels=["model", "url"],
        )
        outstanding = GaugeMetricFamily(
            "lmgauge_upstream_outstanding", "Requests in flight on the node", labels=["model", "url"]
        )
        for node in state["upstreams"]:
            healthy.add_metric([node["model"], node["url"]], 1.0 if node["healthy"] else 0.0)
            outstanding.add_metric([node["model"], node["url"]], node["outstanding"])
        yield healthy
        yield outstanding
        window = GaugeMetricFamily(
            "lmgauge_window_latency_ms",
            "Rolling-window latency percentiles (monitor)",
            labels=["model", "metric", "quantile"],
        )
        rates = GaugeMetricFamily("lmgauge_window_rate", "Rolling-window rates (monitor)", labels=["model", "rate"])
        for model, stats in self.monitor.snapshot().items():
            for metric in ("ttft", "tpot", "e2e"):
                summary = getattr(stats, metric)
                for q in ("p50", "p95", "p99"):
                    value = getattr(summary, q)
                    if value is not None:
                        window.add_metric([model, metric, q[1:]], value)
            rates.add_metric([model, "error"], stats.error_rate)
            rates.add_metric([model, "cache_hit"], stats.cache_hit_rate)
            rates.add_metric([model, "requests_per_s"], stats.requests_per_s)
            if stats.tok_s.p50 is not None:
                rates.add_metric([model, "tokens_per_s_p50"], stats.tok_s.p50)
        yield window
        yield rates
