"""`lmgauge quality` on the real SmolLM2 model (integration), and on the larger Qwen models
(extra_models): a few short chunks keep these quick; the figures themselves are in docs/quality.md."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmgauge.config import Settings
from lmgauge.engines import compute
from lmgauge.errors import InvalidOptionError
from lmgauge.quality import QualityConfig, run_quality, stats, write_outputs
from lmgauge.quality import corpus as corpus_mod
from lmgauge.quality.report import table, verdict_table
from lmgauge.quality.scorer import Scorer
from lmgauge.store import Store

pytestmark = pytest.mark.integration

CTX = 128


def _config(model: str, **kw) -> QualityConfig:
    base = dict(
        model=model, variants=["Q8_0"], kv_types=["f16", "q8_0"], ctx=CTX, chunks=3, reps=1, warmup=0, num_predict=8
    )
    base.update(kw)
    return QualityConfig(**base)


@pytest.fixture
def store(settings):
    return Store(settings.db_path)


def test_quality_run_on_smollm2_measures_resumes_and_writes(settings, store, tmp_path):
    # First the quality passes alone (--no-speed), then the same command with speed: every row is
    # reused from the store and only its speed and memory are measured.
    first = run_quality(settings, _config("smollm2", speed=False), store)
    assert all(r["decode_tps"] is None for r in first["rows"])
    report = run_quality(settings, _config("smollm2"), store)
    rows = {r["label"]: r for r in report["rows"]}
    assert list(rows) == ["Q4_1 (reference)", "Q8_0", "Q4_1 (reference), KV q8_0"]
    assert report["resumed_rows"] == list(rows)
    assert [r["quality"] for r in report["rows"]] == [r["quality"] for r in first["rows"]]
    ref, q8, kv = rows["Q4_1 (reference)"], rows["Q8_0"], rows["Q4_1 (reference), KV q8_0"]
    scored = 3 * (CTX // 2 - 1)
    assert report["corpus"]["scored_tokens"] == scored
    assert ref["quality"]["n"] == scored and ref["is_reference"]
    assert 1 < ref["quality"]["ppl"]["value"] < 1000
    for row in (q8, kv):
        q = row["quality"]
        assert q["n"] == scored
        assert q["ppl_ref"]["value"] == pytest.approx(ref["quality"]["ppl"]["value"], rel=1e-6)
        assert 0 < q["kld_mean"]["value"] < 1  # a different file / cache: some divergence, not a different model
        assert q["kld_median"] <= q["kld_p99"] <= q["kld_max"]
        assert 0.5 < q["same_top"]["value"] <= 1
    for row in (ref, q8, kv):
        assert row["decode_tps"] > 0 and row["prefill_tps"] > 0
        assert row["rss_bytes"] > 0 and row["rss_estimate_bytes"] > 0
    assert q8["weights"] == "Q8_0" and q8["file_size"] > ref["file_size"]  # 8.5 bits/weight beats Q4_1's 5.7
    assert q8["quantize_seconds"] is not None
    # the reference's distributions are on disk, far smaller than llama-perplexity's file
    cost = report["reference_logits"]
    assert 0 < cost["disk_bytes"] < cost["llama_perplexity_bytes"] / 20
    assert report["verdicts"] and all("text" in v for v in report["verdicts"])
    assert table(report).rows and verdict_table(report).rows

    # The same command again: every row, speed included, comes from the store.
    again = run_quality(settings, _config("smollm2"), store)
    assert again["resumed_rows"] == list(rows)
    assert [r["bench_run_id"] for r in again["rows"]] == [r["bench_run_id"] for r in report["rows"]]

    written = write_outputs(report, tmp_path / "out")
    assert sorted(p.suffix for p in written) == [".html", ".json", ".png"]
    assert json.loads((tmp_path / "out" / f"quality-{report['id']}.json").read_text())["rows"]
    assert (tmp_path / "out" / f"quality-{report['id']}.png").read_bytes()[:4] == b"\x89PNG"
    assert "Verdicts" in (tmp_path / "out" / f"quality-{report['id']}.html").read_text()


def test_the_reference_against_itself_has_no_divergence(settings, store, smollm2_path):
    """The pipeline's zero: the reference file scored against its own stored distributions."""
    from lmgauge.quality.reference import ReferenceKey, ReferenceStore
    from lmgauge.quality.run import _reference_pass, _variant_pass

    config = _config("smollm2", speed=False)
    text = corpus_mod.shipped()
    ref_store = ReferenceStore(settings.home / "ref", ReferenceKey(smollm2_path, 0, 0, text.sha256, CTX, 64))
    state: dict = {"chunks": None}
    _reference_pass(smollm2_path, config, text, ref_store, state, lambda *_: None, "ref")
    q = _variant_pass(smollm2_path, "f16", config, text, ref_store, state, lambda *_: None, "self")
    assert q["kld_mean"]["value"] == pytest.approx(0, abs=1e-5)
    assert q["kld_max"] < 1e-4
    assert q["same_top"]["value"] == 1.0
    assert q["ppl"]["value"] == pytest.approx(q["ppl_ref"]["value"], rel=1e-5)


def test_perplexity_agrees_with_an_independent_computation_from_raw_logits(smollm2_path):
    """lmgauge's perplexity vs llama-cpp-python's high-level Llama class (its own context, its own
    tokenizer call, logits for every position) with the definition applied by hand in numpy:
    within 0.5%. Both with flash attention on, as the engine runs (on "auto", llama.cpp's CPU
    default): with it off, llama.cpp's logits differ by up to 1.8 here and perplexity by ~0.5%."""
    from llama_cpp import Llama

    text = corpus_mod.shipped().text[:20000]
    n_chunks = 3
    with Scorer(smollm2_path, CTX) as scorer:
        chunks = corpus_mod.make_chunks(scorer.tokenize(text), CTX, n_chunks, scorer.bos)
        nll = np.concatenate(
            [
                stats.token_nll(
                    stats.log_softmax(scorer.chunk_logits(chunks.tokens[i], chunks.first)), chunks.next_tokens(i)
                )
                for i in range(chunks.count)
            ]
        )
    ours = stats.perplexity(nll).value

    def independent() -> float:
        llm = Llama(model_path=smollm2_path, n_ctx=CTX, n_batch=CTX, logits_all=True, verbose=False, flash_attn=True)
        try:
            tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
            add_bos = llm._model.add_bos_token()  # llama-perplexity: BOS opens each chunk if the model adds one
            total, count = 0.0, 0
            for c in range(n_chunks):
                chunk = tokens[c * CTX : (c + 1) * CTX]
                if add_bos:
                    chunk[0] = llm.token_bos()
                llm.reset()
                llm.eval(chunk)
                scores = np.array(llm.scores[:CTX], dtype=np.float64)
                for j in range(CTX // 2, CTX - 1):  # position j predicts token j + 1
                    row = scores[j]
                    log_z = row.max() + math.log(np.exp(row - row.max()).sum())
                    total += log_z - row[chunk[j + 1]]
                    count += 1
            return math.exp(total / count)
        finally:
            llm.close()

    theirs = compute.call(independent)  # llama.cpp computes on the one compute thread only
    assert ours == pytest.approx(theirs, rel=0.005)


def test_bad_input_is_refused_with_what_to_do(settings, store, tmp_path):
    with pytest.raises(InvalidOptionError, match="--variants"):
        run_quality(settings, _config("smollm2", variants=["Q9_9"]), store)
    with pytest.raises(InvalidOptionError, match="--kv-types"):
        run_quality(settings, _config("smollm2", kv_types=["f8"]), store)
    with pytest.raises(InvalidOptionError, match="no such file"):
        run_quality(settings, _config("smollm2", text=str(tmp_path / "missing.txt")), store)
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(InvalidOptionError, match="at least 256"):
        run_quality(settings, _config("smollm2", text=str(short), speed=False), store)
    with pytest.raises(InvalidOptionError, match="embedded engine"):
        run_quality(settings, _config("ollama:llama3.2"), store)


def test_cli_quality_one_line_errors():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "lmgauge", "quality", "smollm2", "--variants", "Q9_9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "unknown type 'Q9_9'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.extra_models
@pytest.mark.parametrize("name", ["qwen-0.5b", "qwen-1.5b"])
def test_quality_on_qwen(settings: Settings, store, extra_model, name):
    path = extra_model(name)
    report = run_quality(settings, _config(path, variants=["Q8_0", "Q4_0"], chunks=2), store)
    rows = {r["label"]: r for r in report["rows"]}
    assert rows["Q4_K_M (reference)"]["is_reference"]
    for label in ("Q8_0", "Q4_0", "Q4_K_M (reference), KV q8_0"):
        assert 0 < rows[label]["quality"]["kld_mean"]["value"] < 1
    # requantizing Q4_K_M to Q4_0 moves further from it than to Q8_0
    assert rows["Q4_0"]["quality"]["kld_mean"]["value"] > rows["Q8_0"]["quality"]["kld_mean"]["value"]


def test_cli_quality_prints_json_and_writes_the_report(tmp_path, isolated_home):
    import os
    import subprocess
    import sys

    env = {**os.environ, "LMGAUGE_HOME": str(isolated_home)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmgauge",
            "quality",
            "smollm2",
            "--variants",
            "Q8_0",
            "--kv-types",
            "f16",
            "--ctx",
            "128",
            "--chunks",
            "2",
            "--no-speed",
            "--json",
            "-O",
            str(tmp_path / "q.html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [r["label"] for r in report["rows"]] == ["Q4_1 (reference)", "Q8_0"]
    assert report["rows"][1]["quality"]["kld_mean"]["value"] > 0
    assert report["rows"][1]["decode_tps"] is None  # --no-speed
    assert "<img" in (tmp_path / "q.html").read_text()


def test_an_importance_matrix_reaches_the_quantizer(tmp_path, smollm2_path):
    """--imatrix: a file in llama-imatrix's GGUF layout (<tensor>.in_sum2, <tensor>.counts) is read
    (values = in_sum2 / counts) and handed to llama.cpp's quantizer as its null-terminated array.
    (That the quantizer weighs by it is llama.cpp's to test; here: it is read right and accepted.)"""
    import gguf

    from lmgauge.models import inspect_gguf
    from lmgauge.quality.variants import load_imatrix, quantize

    path = tmp_path / "imatrix.gguf"
    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    weights = [t for t in inspect_gguf(smollm2_path).tensors if len(t.shape) == 2 and t.name.startswith("blk.")]
    for t in weights:
        writer.add_tensor(f"{t.name}.in_sum2", np.full(t.shape[0], 2.0, dtype=np.float32))
        writer.add_tensor(f"{t.name}.counts", np.array([2.0], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    imatrix = load_imatrix(str(path))
    assert set(imatrix) == {t.name for t in weights}
    assert all(v == 1.0 for v in imatrix[weights[0].name])  # in_sum2 / counts
    out = quantize(smollm2_path, "Q4_K_M", tmp_path / "Q4_K_M-imatrix.gguf", imatrix)
    assert inspect_gguf(out).quantization == "Q4_K_M"
    with pytest.raises(InvalidOptionError, match="--imatrix"):
        load_imatrix(smollm2_path)  # a model, not an importance matrix
