"""`lmgauge chat`, `lmgauge memory` and `lmgauge eval context` as a user runs them (subprocesses)."""

from __future__ import annotations

import json

import pytest

from lmgauge.config import load_settings
from lmgauge.context.memory import Memory
from lmgauge.store import Store
from support.cli import assert_one_line_error, lmgauge


def test_memory_commands_list_search_edit_and_forget(isolated_home):
    memory = Memory(Store(load_settings().db_path))
    memory.remember("fact", "home city", "Lyon")
    oslo = memory.remember("fact", "home city", "Oslo").item
    rex = memory.remember("fact", "dog name", "Rex").item

    listed = json.loads(lmgauge("memory", "list", "--json").stdout)
    assert {m["value"] for m in listed} == {"Oslo", "Rex"}
    memory.remember(None, "car", "Volvo")
    memory.remember(None, "car", "Volvo", op="delete", source_text="I sold my Volvo.")
    history = {m["value"]: m for m in json.loads(lmgauge("memory", "list", "--all", "--json").stdout)}
    assert history["Lyon"]["status"] == "superseded" and history["Lyon"]["superseded_by"] == oslo.id
    assert history["Volvo"]["status"] == "retracted"

    found = json.loads(lmgauge("memory", "search", "where do I live", "--json").stdout)
    assert found[0]["value"] == "Oslo" and all(m["value"] != "Lyon" for m in found)

    edited = json.loads(lmgauge("memory", "edit", str(rex.id), "--value", "Rexy", "--json").stdout)
    assert edited["value"] == "Rexy"
    proc = lmgauge("memory", "forget", str(oslo.id))
    assert proc.returncode == 0 and "home city: Oslo" in proc.stdout
    assert [m["value"] for m in json.loads(lmgauge("memory", "list", "--json").stdout)] == ["Rexy"]

    assert_one_line_error(lmgauge("memory", "forget", "999"), "no memory with id 999")
    assert_one_line_error(lmgauge("memory", "edit", str(rex.id)), "--value")


@pytest.mark.integration
def test_scripted_chat_prints_one_json_object_per_turn(isolated_home):
    proc = lmgauge(
        "chat",
        "smollm2",
        "--memory",
        "--json",
        "-o",
        "temperature=0",
        "-o",
        "num_predict=8",
        input="Hello, I live in Oslo.\nWhat is two plus two?\n",
    )
    assert proc.returncode == 0, proc.stderr
    turns = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [t["turn"] for t in turns] == [1, 2]
    for t in turns:
        assert 0 < t["budget"]["used"] <= t["budget"]["limit"] and t["budget"]["exact"]
        assert t["timings"]["prompt_tokens"] == t["budget"]["used"]  # our count is the engine's
    assert "Traceback" not in proc.stderr


@pytest.mark.integration
def test_chat_refuses_a_message_bigger_than_the_window_in_one_line(isolated_home):
    proc = lmgauge("chat", "smollm2", "-o", "num_ctx=256", input="word " * 600 + "\n")
    assert_one_line_error(proc, "this message alone", "256")


@pytest.mark.integration
def test_eval_context_tiny_run(isolated_home, tmp_path):
    proc = lmgauge(
        "eval",
        "context",
        "--turns",
        "14",
        "--num-ctx",
        "512",
        "--no-answers",
        "--no-ask",
        "--strategies",
        "truncation,hybrid (oracle memories)",
        "--json",
        "--out",
        str(tmp_path),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_name = {s["name"]: s for s in report["strategies"]}
    assert by_name["hybrid (oracle memories)"]["in_prompt"] == 1.0
    assert by_name["truncation"]["in_prompt"] < 1.0
    assert all(s["tokens_max"] <= s["limit"] for s in report["strategies"])
    assert {r["method"] for r in report["retrieval"]["rows"]} == {"bm25", "embed (wordllama)", "hybrid (wordllama)"}
    assert (tmp_path / "report.json").exists() and (tmp_path / "tokens.png").stat().st_size > 1000


@pytest.mark.integration
def test_interactive_chat_shows_the_budget_each_turn(isolated_home):
    import os
    import sys

    import pexpect

    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "lmgauge",
            "chat",
            "smollm2",
            "-v",
            "--strategy",
            "trim",
            "-o",
            "temperature=0",
            "-o",
            "num_predict=8",
            "-o",
            "num_ctx=512",
        ],
        env={**os.environ},
        encoding="utf-8",
        timeout=240,
    )
    try:
        child.expect("window 512 tokens, strategy trim")
        child.expect(">>> ")
        child.sendline("Hello there!")
        child.expect(r"turn 1: \d+/\d+ tokens \(\d+%\) of a 512-token window")
        child.expect(">>> ")
        child.sendline("word " * 700)  # bigger than the window: refused, the session goes on
        child.expect("this message alone")
        child.expect(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
