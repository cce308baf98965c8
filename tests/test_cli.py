"""The real `lmgauge` command in a subprocess: what a user sees, exit codes, no tracebacks."""

import json
import os
import sys

import pytest

from support.cli import assert_one_line_error, lmgauge


def test_help_explains_the_commands():
    proc = lmgauge("--help")
    assert proc.returncode == 0
    for command in ("run", "models", "show"):
        assert command in proc.stdout


def test_unknown_model_is_one_line_listing_what_exists():
    assert_one_line_error(lmgauge("run", "llama9:70b", "hi"), "llama9:70b", "smollm2:135m")


def test_invalid_option_is_named():
    assert_one_line_error(lmgauge("run", "smollm2", "hi", "-o", "temprature=0"), "temprature")
    assert_one_line_error(lmgauge("run", "smollm2", "hi", "-o", "novalue"), "key=value")
    assert_one_line_error(lmgauge("run", "smollm2", "hi", "--format", "nofile.json"), "--format")


def test_unreachable_server_names_the_url():
    proc = lmgauge("run", "openai:m@http://127.0.0.1:9/v1", "hi", timeout=60)
    assert_one_line_error(proc, "127.0.0.1:9")


def test_not_a_gguf_file(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("nope")
    assert_one_line_error(lmgauge("run", str(fake), "hi"), "not a GGUF file")


@pytest.mark.integration
def test_prompt_over_the_window_names_both_numbers():
    proc = lmgauge("run", "smollm2", "word " * 600, "-o", "num_ctx=256")
    assert_one_line_error(proc, "256", "tokens")


@pytest.mark.integration
def test_run_json_is_machine_readable_and_counts_match_the_tokenizer(smollm2_path):
    proc = lmgauge("run", "smollm2", "Why is the sky blue?", "--json", "-o", "temperature=0", "-o", "num_predict=32")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["model"] == "smollm2" and data["engine"] == "llamacpp" and data["content"]
    t = data["timings"]
    for key in ("ttft_ms", "tpot_ms", "e2e_ms", "prefill_tps", "decode_tps", "prompt_tokens", "output_tokens"):
        assert t[key] is not None

    from lmgauge.config import Settings
    from lmgauge.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(Settings())
    try:
        assert t["output_tokens"] == len(engine.tokenize(smollm2_path, data["content"]))
    finally:
        engine.close()


@pytest.mark.integration
def test_run_verbose_prints_the_stats_block_and_logs_the_request(isolated_home):
    proc = lmgauge("run", "smollm2", "Why is the sky blue?", "--verbose", "-o", "num_predict=16", "-o", "temperature=0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()  # the answer, on stdout
    for label in ("prompt eval count", "eval rate", "time to first token", "time per output token"):
        assert label in proc.stderr
    eval_count = next(line for line in proc.stderr.splitlines() if line.startswith("eval count"))
    assert "16 token(s)" in eval_count

    from lmgauge.store import Store

    rows = Store(isolated_home / "lmgauge.db").requests()
    assert rows and rows[0]["model"] == "smollm2" and rows[0]["output_tokens"] == 16


@pytest.mark.integration
def test_run_reads_the_prompt_from_stdin_and_format_schema(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps({"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]})
    )
    proc = lmgauge(
        "run",
        "smollm2",
        "-",
        "--format",
        str(schema),
        "-o",
        "temperature=0",
        "-o",
        "num_predict=300",
        input="Answer in JSON: what is 2+2?",
    )
    assert proc.returncode == 0, proc.stderr
    assert "answer" in json.loads(proc.stdout)


def test_models_and_show_json():
    proc = lmgauge("models", "--json")
    assert proc.returncode == 0
    names = [m["name"] for m in json.loads(proc.stdout)]
    assert "smollm2:135m" in names
    proc = lmgauge("show", "smollm2", "--json")
    details = json.loads(proc.stdout)["details"]
    assert details["n_layer"] == 30 and details["architecture"] == "llama"


@pytest.mark.integration
def test_interactive_chat_in_a_terminal_keeps_the_conversation():
    import pexpect

    child = pexpect.spawn(
        sys.executable,
        ["-m", "lmgauge", "run", "smollm2", "-o", "temperature=0", "-o", "num_predict=12", "--verbose"],
        env={**os.environ},
        encoding="utf-8",
        timeout=240,
    )
    try:
        child.expect(">>> ")
        child.sendline("My name is Zed. Say hello.")
        child.expect("time per output token")
        child.expect(">>> ")
        child.sendline("/clear")
        child.expect("Cleared session context")  # Ollama's words (issue 20 item 9)
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_a_draft_model_that_cannot_draft_is_one_line():
    assert_one_line_error(lmgauge("run", "smollm2", "hi", "--draft", "ollama:qwen2.5:0.5b"), "local GGUF")
    assert_one_line_error(lmgauge("run", "smollm2", "hi", "--draft", "nosuchdraft"), "nosuchdraft")
