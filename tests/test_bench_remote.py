"""Bench and load tests against real HTTP servers on 127.0.0.1 (the stand-in Ollama and
OpenAI-compatible servers), through the same Client and engines a user's URL would get."""

from __future__ import annotations

import os

import pytest

from lmgauge.bench.load import LoadConfig, resolve_url_target, run_load
from lmgauge.bench.machine import engine_process
from lmgauge.bench.prompts import load_prompts
from lmgauge.bench.results import RunStore
from lmgauge.bench.runner import BenchConfig, run_bench
from lmgauge.client import Client
from lmgauge.errors import EngineUnavailableError, InvalidOptionError
from lmgauge.store import Store
from support.standins import OllamaStandin, OpenAIStandin


@pytest.fixture
def runs(settings):
    return RunStore(Store(settings.db_path))


def test_load_test_against_an_openai_compatible_url(start_standin, settings, runs):
    server = start_standin(OpenAIStandin, reply="one two three four five six", token_delay=0.01)
    name, overrides = resolve_url_target(server.url, None)
    assert name == f"openai:standin-model@{server.base_url}" and overrides == {}
    held = []

    def progress(what, done, planned):  # called as each level starts, and after each request
        if what.endswith("c=3") and not held:
            # the c=3 answers wait until 3 are open (10 s at most), so the count does not depend
            # on how soon the machine starts each worker; 2 (or 4) at once still fails
            server.hold_streams(3)
            held.append(what)

    with Client(settings) as client:
        run = run_load(
            client,
            LoadConfig(model=name, prompts=load_prompts("short"), concurrency=[1, 3], requests=6, num_predict=16),
            runs,
            progress=progress,
        )
    assert run.status == "complete" and held
    assert server.max_active == 3  # three real concurrent HTTP streams at the top level
    levels = {lv["level"]: lv for lv in run.analysis["levels"]}
    assert [levels[k]["ok"] for k in ("c=1", "c=3")] == [6, 6]
    for s in run.samples:
        assert s.status == "ok" and s.output_tokens == 6 and len(s.itl_ms) == 5
        assert s.prompt_tokens > 0  # the server's usage counts
    info = run.models[name]
    assert info["engine"] == "openai"
    # the stand-in runs inside this test process: the engine process is found by its port
    assert info["memory"]["pid"] == os.getpid() and "listening on port" in info["memory"]["process"]


def test_bench_against_ollama_by_url_records_server_timings(start_standin, runs):
    server = start_standin(OllamaStandin, reply="alpha beta gamma delta", token_delay=0.005)
    name, overrides = resolve_url_target(server.url, "standin:latest")
    assert name == "ollama:standin:latest" and overrides == {"ollama_host": server.url}
    with Client(**overrides) as client:
        run = run_bench(client, BenchConfig(models=[name], prompts=load_prompts("short"), reps=2, num_predict=8), runs)
    assert run.status == "complete" and len(run.samples) == 2
    s = run.samples[0]
    assert s.engine_decode_ms is not None and s.engine_prefill_ms is not None  # Ollama's own durations
    assert s.output_tokens == 4 and s.engine_tpot_ms is not None
    assert run.models[name]["engine_version"] == "ollama 0.12.3"


def test_url_targets_need_a_model_when_ambiguous(start_standin, closed_url):
    server = start_standin(OllamaStandin)  # two models
    with pytest.raises(InvalidOptionError, match="--model"):
        resolve_url_target(server.url, None)
    with pytest.raises(EngineUnavailableError, match="cannot reach"):
        resolve_url_target(closed_url, None)


def test_a_server_breaking_off_mid_answer_gives_error_rows_and_the_run_goes_on(start_standin, runs):
    server = start_standin(OpenAIStandin, reply="a b c d", token_delay=0.001)
    name = f"openai:standin-model@{server.base_url}"
    server.faults.drop_after = 2  # the next two answers (the warmup and the first rep) stop after 2 tokens
    server.faults.times = 2
    server.faults.paths = ["/v1/chat/completions"]
    with Client() as client:
        run = run_bench(client, BenchConfig(models=[name], prompts=load_prompts("short"), reps=4, warmup=1), runs)
    assert run.status == "complete"
    assert [s.status for s in run.samples] == ["error", "error", "ok", "ok", "ok"]  # the warmup's error is kept
    assert run.samples[0].rep == -1 and run.samples[1].rep == 0


def test_remote_server_elsewhere_has_unknown_memory():
    from lmgauge.models import ModelRef

    proc = engine_process(ModelRef("m", "openai", "m", "x", url="http://192.0.2.1:8000/v1"))
    assert proc.pid is None and proc.rss() is None and "unknown" in proc.label


def test_a_server_without_token_counts_is_measured_in_streamed_chunks(start_standin, runs):
    server = start_standin(OpenAIStandin, reply="a b c d e", token_delay=0.002, usage=False, flavor="plain")
    name = f"openai:standin-model@{server.base_url}"
    with Client() as client:
        run = run_bench(client, BenchConfig(models=[name], prompts=load_prompts("short"), reps=2), runs)
    from lmgauge.bench.report import tables

    for s in run.samples:
        assert s.status == "ok" and s.tokens_from == "chunks" and s.output_tokens == 5
        assert s.tpot_ms == pytest.approx((s.e2e_ms - s.ttft_ms) / 4) and s.prompt_tokens is None
    assert any("no token counts" in note for t in tables(run) for note in t.notes)


@pytest.mark.parametrize(
    "path,listing",
    [
        ("/api/tags", {"models": [{"name": "a:1"}, {"size": 1}, {"model": "b:2"}]}),
        ("/v1/models", {"data": [{"id": "a:1"}, {"object": "model"}, {"id": "b:2"}]}),
    ],
)
def test_a_model_listing_with_a_nameless_entry_still_names_the_others(httpserver, path, listing):
    # Found by mypy: a nameless entry reached ", ".join(names) as None, a TypeError traceback
    # instead of the one-line "pass --model NAME".
    if path == "/v1/models":
        httpserver.expect_request("/api/tags").respond_with_data("not found", status=404)
    httpserver.expect_request(path).respond_with_json(listing)
    with pytest.raises(InvalidOptionError, match=r"several models \(a:1, b:2\); pass --model NAME"):
        resolve_url_target(httpserver.url_for("/").rstrip("/"), None)
