"""lmgauge.bench over scripted engines: what is measured, recorded, stored and written, what
happens on failures and Ctrl-C, load-generator behaviour, comparison. No model needed."""

from __future__ import annotations

import csv
import itertools
import json
import signal
import statistics

import jsonschema
import pytest

from lmgauge.bench.compare import compare_runs
from lmgauge.bench.load import LoadConfig, parse_levels, parse_slo, poisson_arrivals, run_load
from lmgauge.bench.prompts import BenchPrompt, load_prompts, passage, sized_prompt
from lmgauge.bench.report import RUN_SCHEMA, check_output_paths, html_report, tables, write_outputs
from lmgauge.bench.results import SAMPLE_FIELDS, RunStore, summarize_run
from lmgauge.bench.runner import BenchConfig, parse_token_counts, run_bench
from lmgauge.errors import InvalidOptionError, UnknownModelError
from lmgauge.store import Store
from support.bench_helpers import ConcurrencyProbe, FlakyEngine, ScriptedClient
from support.scripted import ScriptedEngine

ANSWER = "one two three four five six seven eight"


@pytest.fixture
def runs(settings):
    return RunStore(Store(settings.db_path))


def prompts(*names):
    return load_prompts(",".join(names))


# --- bench ---------------------------------------------------------------------------------------


def test_every_model_prompt_rep_is_measured_and_warmups_are_excluded(runs):
    a, b = ScriptedEngine(ANSWER, models=("a",)), ScriptedEngine(ANSWER, models=("b",))
    client = ScriptedClient({"a": a, "b": b})
    run = run_bench(
        client, BenchConfig(models=["a", "b"], prompts=prompts("short", "long"), reps=3, warmup=2, num_predict=6), runs
    )
    assert run.status == "complete"
    assert len(a.requests) == len(b.requests) == 2 * (2 + 3)  # warmups were sent...
    assert len(run.samples) == 2 * 2 * 3  # ...but not recorded
    assert [s.seq for s in run.samples] == list(range(12))
    by_group = {(g["model"], g["group"]): g for g in summarize_run(run)}
    assert set(by_group) == {("a", "short"), ("a", "long"), ("b", "short"), ("b", "long")}
    for s in run.samples:
        assert s.status == "ok" and s.rep in (0, 1, 2)
        assert s.output_tokens == 6  # "long" caps num_predict at 16, above the 6 asked
        assert len(s.itl_ms) == s.output_tokens - 1  # one gap between successive chunks
        assert s.ttft_ms > 0 and s.e2e_ms >= s.ttft_ms
        assert s.tpot_ms == pytest.approx((s.e2e_ms - s.ttft_ms) / (s.output_tokens - 1))
    # temperature 0, fixed seed, num_predict on every request
    options = {(r.options.temperature, r.options.seed, r.options.num_predict) for r in a.requests}
    assert options == {(0.0, 42, 6)}


def test_prefill_heavy_prompt_caps_num_predict_and_options_override(runs):
    engine = ScriptedEngine(" ".join(["w"] * 200), models=("m",))
    client = ScriptedClient({"m": engine})
    run = run_bench(
        client,
        BenchConfig(
            models=["m"],
            prompts=prompts("short", "long"),
            reps=1,
            warmup=0,
            num_predict=64,
            options={"temperature": 0.5},
        ),
        runs,
    )
    out = {s.prompt: s.output_tokens for s in run.samples}
    assert out == {"short": 64, "long": 16}
    assert {r.options.temperature for r in engine.requests} == {0.5}


def test_a_unique_nonce_opens_every_prompt_unless_cache_is_allowed(runs):
    engine = ScriptedEngine(ANSWER, models=("m",))
    client = ScriptedClient({"m": engine})
    run_bench(client, BenchConfig(models=["m"], prompts=prompts("short"), reps=4, warmup=1), runs)
    firsts = [r.messages[0] for r in engine.requests]
    assert all(m.role == "system" and m.content.startswith("[") for m in firsts)
    assert len({m.content for m in firsts}) == 5  # all different from the first token
    engine.requests.clear()
    run_bench(client, BenchConfig(models=["m"], prompts=prompts("short"), reps=4, warmup=1, allow_cache=True), runs)
    assert len({r.messages[0].content for r in engine.requests}) == 1  # identical: the cache can serve them


def test_a_model_failing_mid_run_is_an_error_row_and_the_run_goes_on(runs):
    flaky = FlakyEngine(ANSWER, models=("flaky",), fail_on={2})  # request 2 = the first measured 'short'... rep
    good = ScriptedEngine(ANSWER, models=("good",))
    client = ScriptedClient({"flaky": flaky, "good": good})
    run = run_bench(
        client, BenchConfig(models=["flaky", "good"], prompts=prompts("short", "long"), reps=3, warmup=1), runs
    )
    assert run.status == "complete"
    errors = [s for s in run.samples if s.status == "error"]
    assert len(errors) == 1 and "scripted mid-stream failure" in errors[0].error
    assert errors[0].ttft_ms is None  # no half-measured figures in an error row
    summary = {(g["model"], g["group"]): g for g in summarize_run(run)}
    assert summary[("flaky", "short")]["errors"] == 1 and summary[("flaky", "short")]["ok"] == 2
    assert summary[("flaky", "short")]["metrics"]["ttft_ms"]["n"] == 2
    assert all(summary[("good", p)]["ok"] == 3 for p in ("short", "long"))
    assert any("failed" in note for t in tables(run) for note in t.notes)
    stored = runs.load(run.id)
    assert [s.status for s in stored.samples] == [s.status for s in run.samples]


def test_a_model_that_always_fails_is_skipped_after_three_failures(runs):
    broken = ScriptedEngine(ANSWER, models=("broken",), fail_after=1)  # every stream breaks after 1 token
    good = ScriptedEngine(ANSWER, models=("good",))
    client = ScriptedClient({"broken": broken, "good": good})
    run = run_bench(client, BenchConfig(models=["broken", "good"], prompts=prompts("short"), reps=5, warmup=1), runs)
    assert run.status == "complete"
    statuses = [s.status for s in run.samples if s.model == "broken"]
    assert statuses == ["error", "error", "error", "skipped", "skipped", "skipped"]  # warmup error + 5 reps
    assert len(broken.requests) == 3
    assert [s.status for s in run.samples if s.model == "good"] == ["ok"] * 5


def test_unknown_model_and_bad_config_fail_before_anything_runs(runs):
    engine = ScriptedEngine(ANSWER, models=("m",))
    client = ScriptedClient({"m": engine})
    with pytest.raises(UnknownModelError):
        run_bench(client, BenchConfig(models=["m", "nope"], prompts=prompts("short")), runs)
    with pytest.raises(InvalidOptionError, match="--reps"):
        run_bench(client, BenchConfig(models=["m"], prompts=prompts("short"), reps=0), runs)
    with pytest.raises(InvalidOptionError, match="temprature"):
        run_bench(client, BenchConfig(models=["m"], prompts=prompts("short"), options={"temprature": 0}), runs)
    assert engine.requests == [] and runs.list() == []


def test_ctrl_c_during_a_request_keeps_what_was_measured(runs):
    engine = FlakyEngine(ANSWER, models=("m",), interrupt_on=4)  # 1 warmup + 3 measured, then Ctrl-C
    client = ScriptedClient({"m": engine})
    seen = []
    run = run_bench(
        client, BenchConfig(models=["m"], prompts=prompts("short"), reps=10, warmup=1), runs, on_sample=seen.append
    )
    assert run.status == "interrupted" and run.finished is not None
    assert len(run.samples) == 3 and len(seen) == 3
    stored = runs.load(run.id)
    assert stored.status == "interrupted" and len(stored.samples) == 3
    assert summarize_run(stored)[0]["metrics"]["ttft_ms"]["n"] == 3
    assert "INTERRUPTED" in html_report(stored)


def test_ctrl_c_between_requests_also_keeps_the_samples(runs):
    client = ScriptedClient({"m": ScriptedEngine(ANSWER, models=("m",))})

    def interrupt_after_two(sample):
        if sample.seq == 1:
            raise KeyboardInterrupt

    run = run_bench(
        client, BenchConfig(models=["m"], prompts=prompts("short"), reps=10), runs, on_sample=interrupt_after_two
    )
    assert run.status == "interrupted" and len(runs.load(run.id).samples) == 2


def test_every_request_is_also_in_the_request_log(runs):
    client = ScriptedClient({"m": ScriptedEngine(ANSWER, models=("m",))})
    run = run_bench(client, BenchConfig(models=["m"], prompts=prompts("short"), reps=2), runs)
    rows = runs.store.requests(source="bench")
    assert len(rows) == 2 and {r["extra"]["run_id"] for r in rows} == {run.id}


# --- outputs -------------------------------------------------------------------------------------


def test_json_csv_jsonl_png_html_outputs(runs, tmp_path):
    client = ScriptedClient({"m": FlakyEngine(ANSWER, models=("m",), fail_on={3})})
    run = run_bench(client, BenchConfig(models=["m"], prompts=prompts("short", "long"), reps=3), runs)
    written = write_outputs(run, [tmp_path / "all"])
    assert sorted(p.suffix for p in written) == [".csv", ".html", ".json", ".jsonl", ".png"]
    by = {p.suffix: p for p in written}

    data = json.loads(by[".json"].read_text())
    jsonschema.validate(data, RUN_SCHEMA)
    assert data["machine"]["cores_logical"] >= 1 and data["machine"]["ram_bytes"] > 0
    assert len(data["samples"]) == 6 and data["config"]["request_options"]["temperature"] == 0
    short = next(g for g in data["summary"] if g["group"] == "short")
    assert set(short["metrics"]["ttft_ms"]) == {"n", "mean", "sd", "min", "max", "p50", "p90", "p95", "p99"}

    with open(by[".csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == SAMPLE_FIELDS and len(rows) == 6
    ok = next(r for r in rows if r["status"] == "ok")
    assert float(ok["ttft_ms"]) > 0 and len(json.loads(ok["itl_ms"])) == int(ok["output_tokens"]) - 1
    assert sum(r["status"] == "error" for r in rows) == 1

    lines = [json.loads(line) for line in by[".jsonl"].read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(6)) and set(lines[0]) == set(SAMPLE_FIELDS)
    assert by[".png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = by[".html"].read_text()
    assert "data:image/png;base64," in page and "Distributions" in page
    assert "src='http" not in page and 'src="http' not in page  # self-contained


def test_output_paths_are_checked_before_the_run(tmp_path):
    check_output_paths([tmp_path / "x.json", tmp_path / "dir"])
    with pytest.raises(InvalidOptionError, match=".xlsx"):
        check_output_paths([tmp_path / "x.xlsx"])


def test_stored_runs_by_id_prefix_and_latest(runs):
    client = ScriptedClient({"m": ScriptedEngine(ANSWER, models=("m",))})
    first = run_bench(client, BenchConfig(models=["m"], prompts=prompts("short"), reps=1), runs)
    second = run_bench(client, BenchConfig(models=["m"], prompts=prompts("short"), reps=1), runs)
    assert runs.resolve_id("latest") == second.id
    assert runs.resolve_id("latest~1") == first.id
    assert runs.resolve_id(first.id) == first.id
    with pytest.raises(InvalidOptionError, match="ambiguous"):
        runs.resolve_id(first.id[:4])  # the year: both runs start with it
    assert [r["id"] for r in runs.list()] == [second.id, first.id]
    with pytest.raises(InvalidOptionError, match="no stored run"):
        runs.load("nope")
    with pytest.raises(InvalidOptionError, match="latest~N"):
        runs.resolve_id("latest~x")


# --- comparison ----------------------------------------------------------------------------------


def test_compare_flags_a_real_slowdown_and_not_a_run_against_itself(runs):
    fast = ScriptedClient({"m": ScriptedEngine(ANSWER, token_delay_s=0.002, models=("m",))})
    slow = ScriptedClient({"m": ScriptedEngine(ANSWER, token_delay_s=0.02, models=("m",))})
    a = run_bench(fast, BenchConfig(models=["m"], prompts=prompts("short"), reps=6), runs)
    b = run_bench(slow, BenchConfig(models=["m"], prompts=prompts("short"), reps=6), runs)
    rows = {r.metric: r for r in compare_runs(a, b)}
    tpot = rows["tpot_ms"]
    assert tpot.comparison.significant and tpot.verdict == "worse" and tpot.comparison.delta > 1
    # A 10x slowdown is significant whatever the machine's noise does to one or two samples; the
    # exact p-value of complete separation is checked on fixed numbers in test_metrics.
    assert tpot.comparison.min_p <= tpot.comparison.p_value < 0.05
    assert rows["decode_tps"].verdict == "worse"
    same = compare_runs(a, runs.load(a.id))
    assert all(r.verdict == "~" and r.comparison.delta == 0 for r in same)


def test_compare_two_models_by_prompt_and_refuse_unrelated_runs(runs):
    client = ScriptedClient({"x": ScriptedEngine(ANSWER, models=("x",)), "y": ScriptedEngine(ANSWER, models=("y",))})
    a = run_bench(client, BenchConfig(models=["x"], prompts=prompts("short"), reps=2), runs)
    b = run_bench(client, BenchConfig(models=["y"], prompts=prompts("short"), reps=2), runs)
    assert {r.group for r in compare_runs(a, b)} == {"short"}
    c = run_bench(client, BenchConfig(models=["y"], prompts=prompts("long"), reps=2), runs)
    with pytest.raises(InvalidOptionError, match="share no"):
        compare_runs(a, c)


# --- load ----------------------------------------------------------------------------------------


def test_closed_loop_keeps_exactly_concurrency_requests_in_flight(runs):
    # the first streams wait until 4 are open (10 s at most), so the count does not depend on how
    # soon the machine starts each worker; a generator running 3 (or 5) at once still fails.
    # No warmup: it would be a first stream alone at the gate.
    probe = ConcurrencyProbe(ANSWER, token_delay_s=0.01, models=("m",), hold_until=4)
    client = ScriptedClient({"m": probe})
    config = LoadConfig(model="m", prompts=prompts("short"), concurrency=[4], requests=12, warmup=0)
    run = run_load(client, config, runs)
    assert probe.max_in_flight == 4
    assert len(run.samples) == 12 and {s.level for s in run.samples} == {"c=4"}
    probe.reset()
    run_load(client, LoadConfig(model="m", prompts=prompts("short"), concurrency=[1], requests=4), runs)
    assert probe.max_in_flight == 1


def test_load_levels_report_throughput_errors_goodput_and_percentiles(runs):
    engine = FlakyEngine(ANSWER, token_delay_s=0.002, models=("m",), fail_on={3, 7})  # request 0 is the warmup
    client = ScriptedClient({"m": engine})
    run = run_load(
        client,
        LoadConfig(
            model="m",
            prompts=prompts("short"),
            concurrency=[1, 2],
            requests=6,
            slo={"ttft_ms": 10_000, "tpot_ms": 10_000},
        ),
        runs,
    )
    assert run.status == "complete"
    levels = {lv["level"]: lv for lv in run.analysis["levels"]}
    assert set(levels) == {"c=1", "c=2"}
    total_errors = sum(lv["errors"] for lv in levels.values())
    assert total_errors == 2
    for lv in levels.values():
        assert lv["requests"] == 6 and lv["ok"] == 6 - lv["errors"]
        assert lv["error_rate"] == pytest.approx(lv["errors"] / 6)
        assert lv["throughput_rps"] == pytest.approx(lv["ok"] / lv["duration_s"])
        assert lv["goodput_rps"] == pytest.approx(lv["throughput_rps"])  # a generous SLO: every success is good
        assert lv["ttft_ms"]["n"] == lv["ok"] and lv["itl_ms"]["n"] == lv["ok"] * 7
        assert lv["output_tps"] == pytest.approx(lv["ok"] * 8 / lv["duration_s"])
    strict = run_load(
        client, LoadConfig(model="m", prompts=prompts("short"), concurrency=[1], requests=3, slo={"ttft_ms": 0.0}), runs
    )
    assert strict.analysis["levels"][0]["goodput_rps"] == 0


def test_a_level_is_bounded_by_its_duration_and_stragglers_are_cancelled(runs):
    engine = ScriptedEngine(" ".join(["w"] * 100), token_delay_s=0.05, models=("m",))  # 5 s per request
    client = ScriptedClient({"m": engine})
    # 1 s for both workers to start their first request even on a busy machine; none ends in time
    run = run_load(
        client,
        LoadConfig(model="m", prompts=prompts("short"), concurrency=[2], duration_s=1.0, grace_s=0.2, warmup=0),
        runs,
    )
    assert [s.status for s in run.samples] == ["cancel", "cancel"]  # 2 users, no request started after 1 s
    assert run.analysis["levels"][0]["cancelled"] == 2


def test_open_loop_sends_on_a_seeded_poisson_schedule(runs):
    gaps = []
    arrivals = poisson_arrivals(4.0, seed=7)
    last = 0.0
    for _ in range(4000):
        at = next(arrivals)
        gaps.append(at - last)
        last = at
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.05)  # mean gap 1/rate
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.08)  # exponential: sd = mean
    again = poisson_arrivals(4.0, seed=7)
    assert [next(again) for _ in range(5)] == pytest.approx([sum(gaps[: i + 1]) for i in range(5)])

    client = ScriptedClient({"m": ScriptedEngine(ANSWER, models=("m",))})
    run = run_load(client, LoadConfig(model="m", prompts=prompts("short"), rates=[200.0], requests=10), runs)
    assert len(run.samples) == 10 and {s.level for s in run.samples} == {"rate=200"}
    assert all(s.queue_delay_ms is not None for s in run.samples)


def test_ctrl_c_during_a_load_test_keeps_finished_requests(runs):
    # The main thread hears the signal only when its join(0.1) wakes, so the warmup and the first
    # 3 requests take 80 ms and every later one 4 s: the request in flight at Ctrl-C cannot
    # finish before it is cancelled, however threads are scheduled.
    calls = itertools.count()
    long = " ".join(["w"] * 400)
    client = ScriptedClient(
        {"m": ScriptedEngine(lambda prompt: ANSWER if next(calls) < 4 else long, token_delay_s=0.01, models=("m",))}
    )
    seen = []

    def on_sample(sample):  # runs in a worker thread; a real SIGINT goes to the main thread
        seen.append(sample)
        if len(seen) == 3:
            signal.raise_signal(signal.SIGINT)

    config = LoadConfig(model="m", prompts=prompts("short"), concurrency=[1], requests=6, num_predict=400)
    run = run_load(client, config, runs, on_sample=on_sample)
    assert run.status == "interrupted"
    # run_load returns once the worker has stored the request it cut short (read at once)
    stored = [s.status for s in runs.load(run.id).samples]
    assert stored in (["ok"] * 3, ["ok"] * 3 + ["cancel"])  # + the one cut short, if it had started
    assert run.analysis["levels"][0]["ok"] == 3


def test_load_config_errors():
    with pytest.raises(InvalidOptionError, match="either"):
        LoadConfig(model="m", prompts=prompts("short")).validate()
    with pytest.raises(InvalidOptionError, match="concurrency"):
        LoadConfig(model="m", prompts=prompts("short"), concurrency=[0]).validate()
    with pytest.raises(InvalidOptionError):
        LoadConfig(model="m", prompts=prompts("short"), rates=[-1.0]).validate()


def test_parsers():
    assert parse_token_counts("256, 512,1k,2K,4k,1k") == [256, 512, 1024, 2048, 4096]
    assert parse_token_counts("1.5k,100,200") == [100, 200, 1536]
    for bad in ("256,512", "256,abc,1k", "8,256,512"):
        with pytest.raises(InvalidOptionError, match="--ctx-sweep"):
            parse_token_counts(bad)
    assert parse_slo("ttft=500ms,tpot=50ms") == {"ttft_ms": 500, "tpot_ms": 50}
    assert parse_slo("e2e=2s, itl=0.1s") == {"e2e_ms": 2000, "itl_ms": 100}
    for bad in ("ttft", "latency=5ms", "ttft=fast"):
        with pytest.raises(InvalidOptionError, match="--slo"):
            parse_slo(bad)
    assert parse_levels("4,1,2,2", int) == [1, 2, 4]
    assert parse_levels("0.5,2", float) == [0.5, 2.0]
    with pytest.raises(InvalidOptionError):
        parse_levels("1,x", int)


# --- prompts -------------------------------------------------------------------------------------


def test_builtin_sets_and_prompt_files(tmp_path):
    assert [p.name for p in load_prompts(None)] == ["short", "medium", "long"]
    assert [p.name for p in load_prompts("pp,tg")] == ["long", "short"]
    assert load_prompts("long")[0].num_predict == 16 and load_prompts("long")[0].kind == "pp"
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second prompt \n")
    assert [(p.name, p.messages[-1]["content"]) for p in load_prompts(str(txt))] == [
        ("p1", "first prompt"),
        ("p2", "second prompt"),
    ]
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        '{"name": "q", "prompt": "hi", "system": "be brief", "num_predict": 4}\n'
        '{"messages": [{"role": "user", "content": "yo"}]}\n'
    )
    loaded = load_prompts(str(jl))
    assert loaded[0].num_predict == 4 and loaded[0].messages[0] == {"role": "system", "content": "be brief"}
    assert loaded[1].name == "p2"
    for content, match in (
        ('[{"name": "x"}]', "needs a 'prompt'"),
        ("{oops", "not valid JSON"),
        ('[{"prompt": "a", "num_predict": 0}]', "num_predict"),
        ('[{"name": "a", "prompt": "x"}, {"name": "a", "prompt": "y"}]', "unique"),
    ):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(InvalidOptionError, match=match):
            load_prompts(str(bad))
    with pytest.raises(InvalidOptionError, match="neither a built-in set"):
        load_prompts("nosuchset")


def test_nonce_goes_first_in_the_system_message():
    p = BenchPrompt("x", [{"role": "user", "content": "hi"}])
    assert p.with_nonce("ab12")[0]["content"].startswith("[ab12] ")
    p = BenchPrompt("x", [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}])
    assert p.with_nonce("ab12") == [{"role": "system", "content": "[ab12] S"}, {"role": "user", "content": "hi"}]
    assert p.messages[0]["content"] == "S"  # not mutated


def test_generated_passages_are_deterministic_prose_and_sized_prompts_hit_the_target():
    text = passage(300, seed=1)
    assert text == passage(300, seed=1) and text != passage(300, seed=2)
    sentences = [s for s in text.replace("\n", " ").split(". ") if s]
    assert len(sentences) > 15 and 290 <= len(text.split()) <= 330

    def count(messages):  # a stand-in tokenizer: one token per word
        return sum(len(m["content"].split()) for m in messages) + 5

    for target in (64, 300, 1000):
        messages, n = sized_prompt(target, count, nonce="abcd1234")
        assert n == count(messages) and target - 1 <= n <= target
        assert messages[0]["content"].startswith("[abcd1234]")


# --- sweep analysis ------------------------------------------------------------------------------


def test_sweep_analysis_fits_the_measured_points_and_the_decode_slowdown():
    from lmgauge.bench.results import Run, Sample
    from lmgauge.bench.runner import analyze_sweep

    run = Run(id="r", kind="sweep", config={"model": "m", "models": ["m"]})
    for rep in range(3):
        for n in (256, 512, 1024, 2048, 4096):
            prefill = 2.0 + 0.5 * n + 2e-5 * n * n + rep * 0.01
            tpot = 10 + 0.002 * n
            run.samples.append(
                Sample(
                    run_id="r",
                    seq=len(run.samples),
                    model="m",
                    prompt=f"ctx-{n}",
                    rep=rep,
                    ctx=n,
                    prompt_tokens=n,
                    cached_tokens=0,
                    engine_prefill_ms=prefill,
                    ttft_ms=prefill + 1,
                    engine_tpot_ms=tpot,
                    tpot_ms=tpot,
                    decode_tps=1000 / tpot,
                    prefill_tps=n / prefill * 1000,
                    output_tokens=32,
                )
            )
    run.samples.append(
        Sample(run_id="r", seq=99, model="m", prompt="ctx-4096", rep=3, ctx=4096, status="error", error="boom")
    )
    a = analyze_sweep(run)
    fit = a["prefill_fit"]
    assert fit["b"] == pytest.approx(0.5, rel=1e-3) and fit["c"] == pytest.approx(2e-5, rel=1e-2)
    assert fit["n"] == 15 and fit["r2"] > 0.9999
    share = 2e-5 * 4096**2 / (2 + 0.5 * 4096 + 2e-5 * 4096**2)
    assert fit["at_largest"]["quadratic_share"] == pytest.approx(share, rel=1e-2)
    assert [p["ctx"] for p in a["points"]] == [256, 512, 1024, 2048, 4096]
    assert a["points"][-1]["n"] == 3  # the error row is not a measurement
    assert a["decode_fit"]["ms_per_token_per_1k_ctx"] == pytest.approx(2.048)
    assert a["ttft_fit"]["a"] == pytest.approx(3.01, abs=0.05)


def test_attention_to_weights_ratio_of_a_llama_layer():
    from types import SimpleNamespace

    from lmgauge.bench.runner import attention_ratio

    smollm2 = SimpleNamespace(
        n_embd=576,
        n_head=9,
        n_head_kv=3,
        head_dim_k=64,
        head_dim_v=64,
        architecture="llama",
        metadata={"llama.feed_forward_length": 1536},
    )
    # per layer: q 576x576 + k,v 2 x 576x192 + o 576x576 + ffn 3 x 576x1536 = 3,538,944 weights;
    # attention per token pair: 9 heads x (64 + 64) / 2 = 576
    assert attention_ratio(smollm2) == pytest.approx(576 / 3_538_944)


def test_empty_answers_are_counted_and_explained(runs):
    from lmgauge.types import Chunk, Result, Timings

    class Silent(ScriptedEngine):  # answers with an immediate end of sequence
        def _stream(self, model, prompt, num_predict):
            yield Chunk(
                done=True,
                result=Result(
                    model=model, content="", done_reason="stop", timings=Timings(prompt_tokens=3), engine=self.name
                ),
            )

    client = ScriptedClient({"m": Silent(models=("m",))})
    run = run_load(client, LoadConfig(model="m", prompts=prompts("short"), concurrency=[1], requests=3), runs)
    assert run.analysis["levels"][0]["empty"] == 3 and run.analysis["levels"][0]["ok"] == 3
    assert any("empty answer" in note for t in tables(run) for note in t.notes)


def test_speculation_gets_columns_when_a_model_speculated():
    from lmgauge.bench.report import tables
    from lmgauge.bench.results import Run, Sample
    from lmgauge.types import Result, SpecStats, Timings

    spec = SpecStats(mode="lookup", drafted=10, accepted=8, steps=4, draft_ns=1_000_000, verify_ns=40_000_000)
    result = Result(
        model="m", content="x", done_reason="stop", timings=Timings(output_tokens=20, eval_ns=10**9, speculation=spec)
    )
    sample = Sample.from_result(result, run_id="r", seq=0, model="fast", prompt="p", rep=0)
    assert sample.spec_mode == "lookup" and sample.spec_acceptance == 0.8 and sample.spec_mean_accepted == 2.0
    assert sample.spec_verify_ms == 40.0
    plain = Sample(run_id="r", seq=1, model="plain", prompt="p", rep=0, decode_tps=10.0)
    run = Run(id="r", kind="bench", config={"models": ["plain", "fast"]}, samples=[plain, sample])
    overview = tables(run)[0]
    assert overview.columns[-4:] == ["accepted", "acc/step", "draft ms", "verify ms"]
    rows = {row[0]: row for row in overview.rows}
    assert rows["fast"][-4] == "80%" and rows["plain"][-4] == "-"
    no_spec = Run(id="r2", kind="bench", config={"models": ["plain"]}, samples=[plain])
    assert "accepted" not in tables(no_spec)[0].columns
