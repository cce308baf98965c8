"""Batch jobs: input parsing, per-item errors, resume without duplicates, and the real command
killed halfway through 200 prompts and run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmgauge.batch import BatchItem, read_items, read_results, request_of, run_batch
from lmgauge.errors import EngineError, InvalidOptionError
from lmgauge.types import Result, Timings
from support.standins import OpenAIStandin


def write_lines(path: Path, lines: list) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) and line.startswith("{") else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def ok_answer(item: BatchItem):
    return (
        Result(model="m", content=f"answer to {item.id}", done_reason="stop", timings=Timings(output_tokens=3)),
        None,
        False,
    )


def lmgauge(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lmgauge", *args], capture_output=True, text=True, timeout=timeout)


# --- input ----------------------------------------------------------------------------------------------


def test_items_from_strings_prompts_and_messages(tmp_path):
    path = write_lines(
        tmp_path / "in.jsonl",
        [
            "Why is the sky blue?",
            {"id": "x", "prompt": "hi", "options": {"temperature": 0}, "format": "json"},
            {"messages": [{"role": "user", "content": "hello"}], "system": "be brief"},
        ],
    )
    path.write_text(path.read_text() + "\n")  # a trailing blank line is fine
    items = read_items(path, system="default system")
    assert [i.id for i in items] == ["line-1", "x", "line-3"]
    assert items[0].messages == [
        {"role": "system", "content": "default system"},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert items[1].options == {"temperature": 0} and items[1].format == "json"
    assert items[2].messages[0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize(
    "lines, message",
    [
        (["{not json"], ":1 is not valid JSON"),
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "used twice"),
        ([{"id": "a"}], "needs a 'prompt'"),
        ([{"messages": [{"content": "no role"}]}], "role"),
        ([{"prompt": "x", "options": [1]}], "'options' must be an object"),
    ],
)
def test_bad_input_names_the_line(tmp_path, lines, message):
    with pytest.raises(InvalidOptionError, match=message):
        read_items(write_lines(tmp_path / "in.jsonl", lines))


def test_missing_or_empty_input_is_an_error(tmp_path):
    with pytest.raises(InvalidOptionError, match="no such prompts file"):
        read_items(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InvalidOptionError, match="no prompts"):
        read_items(tmp_path / "empty.jsonl")


# --- running and resuming ------------------------------------------------------------------------------


def test_errors_are_recorded_and_the_batch_goes_on(tmp_path):
    items = [BatchItem(f"i{n}", [{"role": "user", "content": str(n)}]) for n in range(10)]

    def flaky(item):
        if item.id in ("i3", "i7"):
            raise EngineError("the model failed")
        return ok_answer(item)

    summary = run_batch(items, tmp_path / "out.jsonl", flaky, "m", concurrency=3)
    assert (summary.ok, summary.errors, summary.skipped) == (8, 2, 0)
    results = read_results(tmp_path / "out.jsonl")
    assert results["i3"]["status"] == "error" and results["i3"]["error"] == "the model failed"
    assert results["i0"]["content"] == "answer to i0" and results["i0"]["timings"]["output_tokens"] == 3

    # resume: the errors are tried again, the rest skipped; one line per item in the end
    summary = run_batch(items, tmp_path / "out.jsonl", ok_answer, "m")
    assert (summary.ok, summary.errors, summary.skipped) == (2, 0, 8)
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(i.id for i in items)
    assert all(json.loads(line)["status"] == "ok" for line in lines)


def test_keep_errors_skips_failed_items_on_resume(tmp_path):
    items = [BatchItem("a", [{"role": "user", "content": "x"}])]

    def fail(item):
        raise EngineError("no")

    run_batch(items, tmp_path / "out.jsonl", fail, "m")
    summary = run_batch(items, tmp_path / "out.jsonl", ok_answer, "m", retry_errors=False)
    assert summary.skipped == 1 and read_results(tmp_path / "out.jsonl")["a"]["status"] == "error"


def test_resume_drops_a_line_cut_off_by_a_kill_and_duplicates(tmp_path):
    items = [BatchItem(f"i{n}", [{"role": "user", "content": str(n)}]) for n in range(5)]
    out = tmp_path / "out.jsonl"
    good = json.dumps({"id": "i0", "status": "ok", "content": "old", "request": request_of(items[0], "m")})
    out.write_text(f"{good}\n{good}\n" + '{"id": "i1", "status": "ok", "cont')  # killed mid-write
    summary = run_batch(items, out, ok_answer, "m")
    assert (summary.skipped, summary.ok) == (1, 4)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"i{n}" for n in range(5)]
    assert next(r for r in records if r["id"] == "i0")["content"] == "old"


def test_stop_ends_the_run_after_the_items_in_flight(tmp_path):
    import threading

    stop = threading.Event()
    items = [BatchItem(f"i{n}", [{"role": "user", "content": str(n)}]) for n in range(20)]
    seen = []

    def on_done(record):
        seen.append(record["id"])
        if len(seen) == 5:
            stop.set()

    summary = run_batch(items, tmp_path / "out.jsonl", ok_answer, "m", on_done=on_done, stop=stop)
    assert summary.interrupted and summary.ok == 5
    assert run_batch(items, tmp_path / "out.jsonl", ok_answer, "m").ok == 15


# --- the real command ------------------------------------------------------------------------------------


def test_batch_of_200_killed_halfway_and_resumed_gives_exactly_200_results(tmp_path, start_standin):
    server = start_standin(OpenAIStandin, reply="a short answer of six tokens", token_delay=0.01, check_model=False)
    prompts = write_lines(
        tmp_path / "prompts.jsonl", [{"id": f"p{n:03d}", "prompt": f"question {n}"} for n in range(200)]
    )
    out = tmp_path / "results.jsonl"
    model = f"openai:m@{server.base_url}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmgauge", "batch", model, str(prompts), "-O", str(out), "--concurrency", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not out.is_file() or len(out.read_text().splitlines()) < 100:
        assert proc.poll() is None, f"the batch ended before it was interrupted: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no cleanup at all, like a crash or an OOM kill
    proc.wait(timeout=30)
    done_before = len(read_results(out))
    assert 100 <= done_before < 200

    resumed = lmgauge("batch", model, str(prompts), "-O", str(out), "--concurrency", "4", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] >= 100 and summary["skipped"] + summary["ok"] == 200 and summary["errors"] == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 200
    assert sorted(r["id"] for r in records) == [f"p{n:03d}" for n in range(200)]
    assert all(r["status"] == "ok" and r["content"] == "a short answer of six tokens" for r in records)
    # the server answered each prompt at most once more than needed (the ones in flight at the kill)
    assert len(server.received("/v1/chat/completions")) <= 200 + 4


def test_a_bad_item_is_an_error_record_not_a_crash(tmp_path, start_standin):
    server = start_standin(OpenAIStandin, reply="fine", check_model=False)
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        [
            {"id": "good", "prompt": "hi"},
            {"id": "typo", "prompt": "hi", "options": {"temprature": 0}},
        ],
    )
    out = tmp_path / "results.jsonl"
    proc = lmgauge("batch", f"openai:m@{server.base_url}", str(prompts), "-O", str(out), "--json")
    assert proc.returncode == 1, proc.stderr  # the batch went on, and its exit code says an item failed
    assert json.loads(proc.stdout)["errors"] == 1
    results = read_results(out)
    assert results["good"]["status"] == "ok"
    assert results["typo"]["status"] == "error" and "temprature" in results["typo"]["error"]


def test_batch_errors_are_one_line(tmp_path):
    proc = lmgauge("batch", "smollm2", str(tmp_path / "missing.jsonl"), "-O", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no such prompts file" in proc.stderr


@pytest.mark.integration
def test_embedded_batch_with_concurrency(tmp_path):
    prompts = write_lines(tmp_path / "prompts.jsonl", [f"Name a color. ({n})" for n in range(6)])
    out = tmp_path / "results.jsonl"
    proc = lmgauge(
        "batch",
        "smollm2",
        str(prompts),
        "-O",
        str(out),
        "-c",
        "3",
        "--option",
        "num_predict=8",
        "--option",
        "temperature=0",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "ok" and r["content"] for r in records)
    assert all(r["timings"]["output_tokens"] <= 8 for r in records)


def test_batch_auto_routes_each_prompt_and_records_its_tier(tmp_path, start_standin):
    from support.standins import OllamaStandin

    replies = {"small": "", "large": "routed answer"}
    server = start_standin(
        OllamaStandin, models=["small", "large"], reply=lambda body: replies[body["model"].split(":")[0]]
    )
    prompts = write_lines(tmp_path / "prompts.jsonl", ["hi", "What is 2 + 2?"])
    env = {
        **os.environ,
        "LMGAUGE_OLLAMA_HOST": server.url,
        "LMGAUGE_ROUTING__TIERS": json.dumps({"small": "ollama:small", "large": "ollama:large"}),
    }
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "lmgauge", "batch", "auto", str(prompts), "-O", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    records = read_results(out)
    assert {r["tier"] for r in records.values()} == {"large"}  # the small tier's empty answers escalated
    assert all(r["content"] == "routed answer" for r in records.values())


def test_batch_cache_answers_repeats_without_the_model(tmp_path, start_standin):
    server = start_standin(OpenAIStandin, reply="cached later", check_model=False)
    prompts = write_lines(tmp_path / "prompts.jsonl", ["one question", "another question"])
    model = f"openai:m@{server.base_url}"
    args = ("batch", model, str(prompts), "--option", "temperature=0", "--cache", "--json")
    assert lmgauge(*args, "-O", str(tmp_path / "first.jsonl")).returncode == 0
    assert len(server.received("/v1/chat/completions")) == 2
    second = lmgauge(*args, "-O", str(tmp_path / "second.jsonl"))
    assert second.returncode == 0, second.stderr
    records = read_results(tmp_path / "second.jsonl")
    assert all(r["cached"] and r["content"] == "cached later" for r in records.values())
    assert len(server.received("/v1/chat/completions")) == 2


def test_a_result_written_without_its_request_is_not_taken_for_this_runs(tmp_path):
    items = [BatchItem("i0", [{"role": "user", "content": "0"}])]
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "i0", "status": "ok", "content": "from some other run"}) + "\n")
    with pytest.raises(InvalidOptionError, match="without a record of its model"):
        run_batch(items, out, ok_answer, "m")
    summary = run_batch(items, out, ok_answer, "m", force=True)
    assert (summary.skipped, summary.ok) == (0, 1)
