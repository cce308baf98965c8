"""The embedded engine with the real SmolLM2 model."""

import json
import threading

import jsonschema
import pytest

from lmgauge.engines.base import collect, with_client_clock
from lmgauge.errors import ContextOverflowError, InvalidOptionError, ModelFileError
from lmgauge.types import ChatRequest, GenerateRequest, Message, Options

pytestmark = pytest.mark.integration
GREEDY = dict(temperature=0, seed=42)


def ask(engine, path, text, **kw):
    fmt = kw.pop("format", None)
    req = ChatRequest(model=path, messages=[Message("user", text)], options=Options(**{**GREEDY, **kw}), format=fmt)
    return collect(with_client_clock(engine.chat(req)))


def test_chat_streams_and_reports_consistent_stats(llama_engine, smollm2_path):
    req = ChatRequest(
        model=smollm2_path,
        messages=[Message("user", "Write a long story about a dragon.")],
        options=Options(num_predict=24, **GREEDY),
    )
    chunks = list(with_client_clock(llama_engine.chat(req)))
    assert chunks[-1].done and all(not c.done for c in chunks[:-1])
    result = chunks[-1].result
    streamed = "".join(c.content for c in chunks)
    assert streamed == result.content and streamed.strip()
    t = result.timings
    # eval_count equals the tokenized output length, prompt count the templated prompt's
    assert t.output_tokens == len(llama_engine.tokenize(smollm2_path, result.content))
    assert t.prompt_tokens == len(llama_engine.chat_tokens(smollm2_path, req.messages))
    assert t.prompt_tokens == t.prompt_eval_tokens + t.cached_tokens
    assert result.done_reason == "length" and t.output_tokens == 24
    assert 0 < t.ttft_ms <= t.e2e_ms and t.tpot_ms > 0 and t.decode_tps > 0 and t.prefill_tps > 0
    assert len(t.itl_ms) == len([c for c in chunks if c.content]) - 1


def test_greedy_is_deterministic_and_the_prefix_cache_is_reported(llama_engine, smollm2_path):
    a = ask(llama_engine, smollm2_path, "Say hello in French.", num_predict=16)
    b = ask(llama_engine, smollm2_path, "Say hello in French.", num_predict=16)
    assert a.content == b.content
    # the second request finds the whole prompt cached except the token needed for logits
    assert b.timings.cached_tokens == b.timings.prompt_tokens - 1
    assert b.timings.prompt_eval_tokens == 1


def test_json_schema_output_parses_and_validates(llama_engine, smollm2_path):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    result = ask(
        llama_engine, smollm2_path, "Describe Paris as JSON with city and population.", num_predict=80, format=schema
    )
    jsonschema.validate(json.loads(result.content), schema)
    plain = ask(llama_engine, smollm2_path, "Give me a JSON object about a cat.", num_predict=60, format="json")
    assert isinstance(json.loads(plain.content), dict)


def test_stop_strings_cut_the_output(llama_engine, smollm2_path):
    full = ask(llama_engine, smollm2_path, "Count from 1 to 10, comma separated.", num_predict=40)
    assert "5" in full.content
    cut = ask(llama_engine, smollm2_path, "Count from 1 to 10, comma separated.", num_predict=40, stop=["5"])
    assert cut.done_reason == "stop" and "5" not in cut.content
    assert full.content.startswith(cut.content)


def test_tokenize_round_trip(llama_engine, smollm2_path):
    text = "Hello, world! Ünïcödé and emoji 🚀 survive."
    tokens = llama_engine.tokenize(smollm2_path, text)
    assert tokens and llama_engine.detokenize(smollm2_path, tokens) == text


def test_prompt_over_the_window_is_refused_naming_both_numbers(llama_engine, smollm2_path):
    long_text = "word " * 400
    with pytest.raises(ContextOverflowError) as exc:
        ask(llama_engine, smollm2_path, long_text, num_ctx=256)
    assert exc.value.num_ctx == 256 and exc.value.prompt_tokens > 256
    assert f"{exc.value.prompt_tokens} tokens" in str(exc.value) and "256" in str(exc.value)


def test_empty_text_is_an_option_error_and_the_engine_goes_on(llama_engine, smollm2_path):
    # SmolLM2 adds no BOS: "" is zero tokens, which llama.cpp cannot decode (an EngineError before).
    with pytest.raises(InvalidOptionError, match="the prompt is empty"):
        collect(llama_engine.generate(GenerateRequest(model=smollm2_path, prompt="", raw=True)))
    with pytest.raises(InvalidOptionError, match="embedding input 1 is empty"):
        llama_engine.embed(smollm2_path, ["hello", ""])
    assert len(llama_engine.embed(smollm2_path, ["hello"]).vectors) == 1
    assert ask(llama_engine, smollm2_path, "hi").timings.output_tokens >= 1


def test_num_ctx_beyond_the_trained_context_is_an_option_error(llama_engine, smollm2_path):
    with pytest.raises(InvalidOptionError, match="exceeds the model's trained context of 8192"):
        ask(llama_engine, smollm2_path, "hi", num_ctx=16384)


def test_generate_raw_and_templated(llama_engine, smollm2_path):
    raw = collect(
        llama_engine.generate(
            GenerateRequest(
                model=smollm2_path,
                prompt="The capital of France is",
                raw=True,
                options=Options(num_predict=8, **GREEDY),
            )
        )
    )
    assert raw.content.strip()
    assert len(raw.context) == raw.timings.prompt_tokens + raw.timings.output_tokens  # Ollama's `context`
    assert raw.timings.prompt_tokens <= len(llama_engine.tokenize(smollm2_path, "The capital of France is")) + 1
    templated = collect(
        llama_engine.generate(
            GenerateRequest(
                model=smollm2_path, prompt="hi", system="Answer briefly.", options=Options(num_predict=8, **GREEDY)
            )
        )
    )
    assert templated.timings.prompt_tokens > raw.timings.prompt_tokens


def test_cancelling_a_stream_frees_the_slot(llama_engine, smollm2_path):
    req = ChatRequest(
        model=smollm2_path,
        messages=[Message("user", "Tell me a long story.")],
        options=Options(num_predict=200, **GREEDY),
    )
    stream = llama_engine.chat(req)
    next(stream)
    stream.close()  # client went away
    after = ask(llama_engine, smollm2_path, "Say yes.", num_predict=4)  # must not hang
    assert after.timings.output_tokens > 0
    assert all(m.details["active"] == 0 for m in llama_engine.loaded())


def test_concurrent_callers_all_finish(llama_engine, smollm2_path):
    results, errors = [], []

    def worker(i):
        try:
            results.append(ask(llama_engine, smollm2_path, f"Say the number {i}.", num_predict=8))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 3


@pytest.mark.extra_models
def test_embeddings_are_normalised(llama_engine):
    path = "/work/shared/models/all-MiniLM-L6-v2-q8_0.gguf"
    import os

    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: this test needs the MiniLM embedding GGUF from ../shared/models")
    emb = llama_engine.embed(path, ["a cat sat on the mat", "a kitten rested on a rug", "stock market crash"])
    assert len(emb.vectors) == 3 and len(emb.vectors[0]) == 384
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731  a short factory, read where it is used
    assert dot(emb.vectors[0], emb.vectors[0]) == pytest.approx(1.0, abs=1e-4)
    assert dot(emb.vectors[0], emb.vectors[1]) > dot(emb.vectors[0], emb.vectors[2])


def test_keep_alive_zero_unloads_after_the_request(smollm2_path):
    from lmgauge.config import Settings
    from lmgauge.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(Settings())
    try:
        req = ChatRequest(
            model=smollm2_path, messages=[Message("user", "hi")], options=Options(num_predict=2, **GREEDY), keep_alive=0
        )
        result = collect(engine.chat(req))
        assert result.timings.load_ns > 0
        assert engine.loaded() == []
    finally:
        engine.close()


def test_a_corrupt_model_file_is_a_clear_error(llama_engine, tmp_path, smollm2_path):
    bad = tmp_path / "bad.gguf"
    data = bytearray(open(smollm2_path, "rb").read(20_000_000))
    bad.write_bytes(bytes(data))  # header intact, tensors cut off
    with pytest.raises(ModelFileError):
        ask(llama_engine, str(bad), "hi", num_predict=2)


def test_settings_that_cannot_fit_are_refused_before_loading(smollm2_path):
    from lmgauge.config import Settings
    from lmgauge.engines.llamacpp import LlamaCppEngine
    from lmgauge.errors import InsufficientMemoryError

    engine = LlamaCppEngine(Settings(parallel=16, memory_limit="200MiB"))
    try:
        req = ChatRequest(
            model=smollm2_path, messages=[Message("user", "hi")], options=Options(num_predict=2, num_ctx=8192, **GREEDY)
        )
        with pytest.raises(InsufficientMemoryError) as exc:
            collect(engine.chat(req))
        assert "num_ctx 8192 x 16 parallel" in str(exc.value) and "200.00 MiB" in str(exc.value)
        assert engine.loaded() == []
    finally:
        engine.close()


def test_loaded_models_report_the_sizing_estimate(llama_engine, smollm2_path):
    ask(llama_engine, smollm2_path, "hi", num_predict=2)
    (m,) = [m for m in llama_engine.loaded() if not m.details["embedding"]]
    assert 100 * 2**20 < m.size_bytes < 400 * 2**20 and m.context_length == 4096


def test_a_request_waiting_for_another_window_size_is_told_the_engine_is_shutting_down(smollm2_path):
    """A request waits (up to 120 s) while the model runs with another client's num_ctx. If the
    engine closes meanwhile, the waiter is refused at once and told why, not told that it
    waited 120 s for the other window."""
    import time

    from lmgauge.config import Settings
    from lmgauge.engines.llamacpp import LlamaCppEngine
    from lmgauge.errors import ShuttingDownError

    engine = LlamaCppEngine(Settings(keep_alive=-1))
    ask(engine, smollm2_path, "hi", num_predict=1, num_ctx=256)
    (key,) = list(engine._runners)
    engine._runners[key].users += 1  # as if another client's answer were still decoding
    failure: list[BaseException] = []

    def waiter() -> None:
        try:
            ask(engine, smollm2_path, "hi", num_predict=1, num_ctx=320)
        except BaseException as exc:  # noqa: BLE001  the test inspects whatever it was
            failure.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)  # the waiter is inside its wait for the busy window
    assert thread.is_alive() and not failure
    engine.close()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(failure[0], ShuttingDownError) and "shutting down" in str(failure[0]), failure
