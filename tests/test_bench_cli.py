"""`lmgauge bench / load / report / compare / runs` as a user runs them: a real subprocess, the
real embedded model for the integration tests, one-line errors for bad flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmgauge.models import file_sha256
from support.cli import assert_one_line_error, lmgauge


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["bench", "smollm2", "--reps", "0"], "--reps"),
        (["bench", "smollm2", "--num-predict", "0"], "--num-predict"),
        (["bench", "smollm2", "--ctx-sweep", "256,512"], "at least 3"),
        (["bench", "smollm2", "--ctx-sweep", "256,1k,16k"], "trained context of 8192"),
        (["bench", "smollm2", "--ctx-sweep", "256,512,1k", "--ctx", "600"], "--ctx 600 is too small"),
        (["bench", "smollm2", "smollm2", "--ctx-sweep", "1k,2k,4k"], "one model"),
        (["bench", "smollm2", "--prompts", "nosuch.txt"], "--prompts"),
        (["bench", "smollm2", "-O", "out.xlsx"], ".xlsx"),
        (["bench", "nosuchmodel"], "nosuchmodel"),
        (["bench", "smollm2", "-o", "temprature=0"], "temprature"),
        (["load", "smollm2", "--concurrency", "1", "--rate", "1"], "not both"),
        (["load", "smollm2", "--concurrency", "1,x"], "not a whole number"),
        (["load", "smollm2", "--slo", "latency=5ms"], "--slo"),
        (["load", "smollm2", "--model", "x"], "--model goes with a server URL"),
        (["load", "smollm2", "--duration", "soon"], "duration"),
        (["report", "nosuchrun"], "no stored run"),
        (["compare", "latest", "latest~1"], "no stored run"),
        (["runs", "--kind", "other"], "--kind"),
        (["bench", "smollm2", "--parallel", "0"], "--parallel"),
        (["compare", "a", "b", "--alpha", "2"], "--alpha"),
    ],
)
def test_bad_flags_get_one_line(args, fragment, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmgauge", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert_one_line_error(proc, fragment)


def test_load_against_a_closed_url_names_it(closed_url):
    assert_one_line_error(lmgauge("load", closed_url, timeout=60), "cannot reach")


@pytest.mark.integration
def test_bench_smollm2_writes_table_json_csv_png_html_and_can_be_reported_and_compared(tmp_path, smollm2_path):
    out = tmp_path / "out"
    proc = lmgauge(
        "bench",
        "smollm2",
        "--prompts",
        "short",
        "--reps",
        "2",
        "--warmup",
        "1",
        "--num-predict",
        "8",
        "-O",
        str(out),
        "-O",
        str(tmp_path / "stream.jsonl"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Per model and prompt" in proc.stdout and "Memory" in proc.stdout
    files = sorted(p.suffix for p in out.iterdir())
    assert files == [".csv", ".html", ".json", ".jsonl", ".png"]
    data = json.loads(next(out.glob("*.json")).read_text())
    model = data["models"]["smollm2"]
    assert model["file_sha256"] == file_sha256(smollm2_path)
    assert model["engine"] == "llamacpp" and model["engine_version"].startswith("llama-cpp-python")
    assert model["memory"]["rss_bytes"] > model["memory"]["rss_before_bytes"] > 0  # loading the model grew it
    assert model["memory"]["process"].startswith("this process")
    assert model["load_ms"] > 0 and model["num_ctx"] == 4096
    assert data["machine"]["cpu"] and data["machine"]["ram_bytes"] > 0
    samples = data["samples"]
    assert len(samples) == 2 and all(s["status"] == "ok" for s in samples)
    for s in samples:
        assert s["output_tokens"] == 8 and 40 <= s["prompt_tokens"] <= 50
        assert s["cached_tokens"] <= 6  # only the template's opening tokens: the nonce defeats the cache
        assert s["ttft_ms"] > 0 and s["decode_tps"] > 0 and s["prefill_tps"] > 0 and len(s["itl_ms"]) == 7
        assert s["engine_tpot_ms"] == pytest.approx(1000 / s["decode_tps"])
    streamed = [json.loads(line) for line in (tmp_path / "stream.jsonl").read_text().splitlines()]
    assert [s["seq"] for s in streamed] == [0, 1]

    run_id = data["id"]
    report = tmp_path / "report.html"
    proc = lmgauge("report", run_id, "-O", str(report))
    assert proc.returncode == 0, proc.stderr
    assert report.read_text().count("data:image/png;base64,") == 1
    proc = lmgauge("compare", run_id, "latest", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert rows and all(r["verdict"] == "too few" for r in rows)  # a run against itself, 2 reps: too few to test
    listed = json.loads(lmgauge("runs", "--json").stdout)
    assert [r["id"] for r in listed] == [run_id] and listed[0]["samples"] == 2


@pytest.mark.integration
def test_ctrl_c_writes_what_was_measured(tmp_path, isolated_home):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stream = tmp_path / "live.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmgauge",
            "bench",
            "smollm2",
            "--prompts",
            "short",
            "--reps",
            "200",
            "--num-predict",
            "4",
            "-O",
            str(tmp_path / "run.json"),
            "-O",
            str(stream),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 240
    while time.time() < deadline and (not stream.exists() or len(stream.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["status"] == "interrupted" and 2 <= len(data["samples"]) < 200
    assert "INTERRUPTED" in stdout


@pytest.mark.integration
def test_context_sweep_fills_the_context_it_names_and_fits_a_curve(tmp_path):
    proc = lmgauge(
        "bench",
        "smollm2",
        "--ctx-sweep",
        "64,128,256,512",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--num-predict",
        "4",
        "-O",
        str(tmp_path / "sweep.json"),
        "-O",
        str(tmp_path / "sweep.png"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Context sweep" in proc.stdout and "fit" in proc.stdout
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["kind"] == "sweep" and data["config"]["num_ctx"] == 768  # 512 + 4, padded, rounded up to 256
    points = data["analysis"]["points"]
    for p in points:
        assert p["ctx"] - 3 <= p["prompt_tokens"] <= p["ctx"]
    fit = data["analysis"]["prefill_fit"]
    assert fit["n"] == 4 and {"a", "b", "c", "r2", "exponent"} <= set(fit)  # values are timings: not asserted
    assert data["analysis"]["theory"]["attention_per_linear"] == pytest.approx(576 / 3538944)
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


@pytest.mark.integration
def test_load_test_on_the_embedded_engine_with_batching(tmp_path):
    proc = lmgauge(
        "load", "smollm2", "--concurrency", "1,2", "--requests", "2", "--num-predict", "4", "--parallel", "2", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    levels = {lv["level"]: lv for lv in data["analysis"]["levels"]}
    assert set(levels) == {"c=1", "c=2"}
    assert all(lv["ok"] == 2 and lv["throughput_rps"] > 0 for lv in levels.values())
    assert data["models"]["smollm2"]["parallel"] == 2
