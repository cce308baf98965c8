"""Speculative decoding in the embedded engine with real models: greedy output identical with and
without it (prompt lookup, a draft model, several streams batched together, a grammar, the
window's edge), and the draft model's vocabulary checked."""

from __future__ import annotations

import json
import threading

import pytest

from lmgauge.config import Settings
from lmgauge.engines.base import collect
from lmgauge.engines.llamacpp import LlamaCppEngine
from lmgauge.engines.sampling import Sampler
from lmgauge.errors import InvalidOptionError
from lmgauge.types import ChatRequest, Message, Options, Speculation

pytestmark = pytest.mark.integration

PASSAGE = (
    "The museum opens at 9:30 on weekdays and at 10:00 on Saturdays. Tickets cost 12 euros for adults "
    "and 6 euros for students. The east wing is closed for renovation until the end of March."
)
REWRITE = f"Copy this text exactly, word for word:\n\n{PASSAGE}"
EXTRACT = f"{PASSAGE}\n\nQuote the sentence about tickets."
CHAT = "Name three colors."
LOOKUP = Speculation(lookup=True)


@pytest.fixture(scope="module")
def engine():
    # One slot and no prefix reuse, as for any bit-for-bit comparison: with a prompt resumed from
    # the previous request's cache (its last token evaluated alone instead of in a 64+ token
    # batch, another matmul path), the same greedy request repeated can already part at a
    # near-tie without speculation (measured on EXTRACT).
    # Verification batches themselves round exactly like single-token steps (checked row by
    # row: identical logits for batches of 2..33 tokens).
    engine = LlamaCppEngine(Settings(parallel=1, keep_alive=-1, num_ctx=1024, prefix_cache=False))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def batch_engine():
    engine = LlamaCppEngine(Settings(parallel=4, keep_alive=-1, num_ctx=1024))
    yield engine
    engine.close()


def ask(engine, path, text, speculation=None, n=40, **kw):
    request = ChatRequest(
        model=path,
        messages=[Message("user", text)],
        options=Options(temperature=0, num_predict=n, num_ctx=kw.pop("num_ctx", None)),
        speculation=speculation,
        **kw,
    )
    return collect(engine.chat(request))


def test_prompt_lookup_gives_the_same_greedy_answer_in_fewer_steps(engine, smollm2_path):
    for prompt in (REWRITE, EXTRACT, CHAT):
        plain = ask(engine, smollm2_path, prompt)
        fast = ask(engine, smollm2_path, prompt, LOOKUP)
        assert fast.content == plain.content, prompt
        assert fast.timings.output_tokens == plain.timings.output_tokens
        assert plain.timings.speculation is None
        spec = fast.timings.speculation
        assert spec.mode == "lookup" and spec.plain_steps >= 1
        # every output token came from a step: one per plain or speculative step, plus accepted drafts
        assert spec.plain_steps + spec.steps + spec.accepted + 1 >= fast.timings.output_tokens
    rewrite = ask(engine, smollm2_path, REWRITE, LOOKUP).timings.speculation
    assert rewrite.drafted > 0 and rewrite.accepted > 0  # the answer repeats the prompt: drafts were right
    assert rewrite.steps + rewrite.plain_steps < ask(engine, smollm2_path, REWRITE).timings.output_tokens


def test_a_draft_model_gives_the_same_greedy_answer(engine, smollm2_path):
    """SmolLM2 drafting for itself: the draft-model path (its own KV kept in step with the
    target's, rejected drafts removed from both) with a model every machine has."""
    draft = Speculation(draft=smollm2_path, draft_max=6)
    for prompt in (CHAT, REWRITE):
        plain = ask(engine, smollm2_path, prompt)
        fast = ask(engine, smollm2_path, prompt, draft)
        assert fast.content == plain.content
        assert fast.timings.speculation.mode == "draft"
        assert fast.timings.speculation.accepted > 0
    # a second turn reuses the draft model's cache of the same slot (common prefix kept)
    again = ask(engine, smollm2_path, REWRITE, draft)
    assert again.content == plain.content
    # where the answer copies its prompt, prompt lookup drafted some steps in place of the draft
    # model, whose sequence caught up afterwards (the answer is still the target's own)
    assert 0 < again.timings.speculation.lookup_steps <= again.timings.speculation.steps


def test_speculating_streams_batched_together_each_keep_their_own_state(batch_engine, smollm2_path):
    """Four streams in one batch: two by prompt lookup, one with a draft model, one plain. Each
    finishes with its own stats; the copying stream copies (its drafts were verified in the
    shared batch). Exact equality with answers given alone is not asserted: batching alone can
    part greedy answers at near-ties (README)."""
    jobs = [(REWRITE, LOOKUP), (EXTRACT, LOOKUP), (CHAT, Speculation(draft=smollm2_path)), (CHAT, None)]
    results: list = [None] * len(jobs)
    errors: list = []

    def worker(i):
        try:
            results[i] = ask(batch_engine, smollm2_path, jobs[i][0], jobs[i][1], n=32)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # it copies (the first words; a near-tie in the shared batch can part it later, as at char 41
    # once: "and at 10:00" for "and closes at 10:00"), and drafts were accepted
    assert results[0].content.startswith(PASSAGE[:30])
    assert results[0].timings.speculation.accepted > 0
    assert results[1].timings.speculation.mode == "lookup"
    assert results[2].timings.speculation.mode == "draft"
    assert results[3].timings.speculation is None and results[3].content
    assert results[0].timings.speculation is not results[1].timings.speculation


def test_grammar_constrained_output_is_the_same_and_valid(engine, smollm2_path):
    schema = {
        "type": "object",
        "properties": {"opens": {"type": "string"}, "price": {"type": "integer"}},
        "required": ["opens", "price"],
    }
    prompt = f"{PASSAGE}\n\nGive the weekday opening time and the adult price as JSON."
    plain = ask(engine, smollm2_path, prompt, n=48, format=schema)
    fast = ask(engine, smollm2_path, prompt, LOOKUP, n=48, format=schema)
    assert fast.content == plain.content
    if plain.done_reason == "stop":
        json.loads(fast.content)


def test_drafts_the_grammar_forbids_are_cut(engine, smollm2_path):
    runner, _ = engine.acquire(smollm2_path, Options())
    try:
        sampler = Sampler(runner.vocab, Options(temperature=0), 'root ::= "{" [a-z]+ "}"')
        good = runner.tokenize("{abc}")
        assert sampler.grammar_prefix(good) == len(good)
        assert sampler.grammar_prefix(runner.tokenize("hello")) == 0
        mixed = runner.tokenize("{ab") + runner.tokenize("1}")
        assert sampler.grammar_prefix(mixed) == len(runner.tokenize("{ab"))
        assert sampler.grammar_prefix(good) == len(good)  # the probe left the grammar's state alone
        sampler.close()
    finally:
        engine.release(runner, None)


def test_the_window_ends_the_answer_at_the_same_token(engine, smollm2_path):
    """Drafts never run past the window: both answers stop at the same place, reason 'length'."""
    long_copy = "Copy this text exactly, word for word:\n\n" + " ".join([PASSAGE] * 3)
    window = 256  # llama.cpp pads windows to 256 cells: the prompt fills most of it
    assert 180 < len(engine.chat_tokens(smollm2_path, [Message("user", long_copy)])) < window - 16
    plain = ask(engine, smollm2_path, long_copy, n=-1, num_ctx=window)
    fast = ask(engine, smollm2_path, long_copy, LOOKUP, n=-1, num_ctx=window)
    assert plain.done_reason == fast.done_reason == "length"
    assert fast.content == plain.content
    assert fast.timings.output_tokens == plain.timings.output_tokens
    assert fast.timings.speculation.accepted > 0  # drafts were in play right up to the edge


def test_the_client_takes_speculation_from_the_settings(smollm2_path):
    from lmgauge import Client

    with Client(keep_alive=0, num_ctx=512) as client:
        client.settings.aliases["fast"] = smollm2_path
        client.settings.speculative.models["fast"] = "lookup"
        assert client.speculation(client.resolve("smollm2")) is None  # configured by name: "fast" only
        result = client.chat(
            "fast", [{"role": "user", "content": REWRITE}], options={"temperature": 0, "num_predict": 16}
        )
        assert result.timings.speculation.mode == "lookup"
        assert result.timings.to_dict()["speculation"]["acceptance_rate"] is not None
        client.settings.speculative.models["fast"] = "ollama:qwen2.5:7b"
        with pytest.raises(InvalidOptionError, match="local GGUF"):
            client.speculation(client.resolve("fast"))


@pytest.mark.extra_models
def test_qwen_half_b_drafts_for_qwen_one_and_a_half_b(extra_model):
    engine = LlamaCppEngine(Settings(parallel=1, keep_alive=-1, num_ctx=1024))
    target, draft = extra_model("qwen-1.5b"), extra_model("qwen-0.5b")
    try:
        prompt = "Write a Python function that returns the n-th Fibonacci number iteratively."
        plain = ask(engine, target, prompt, n=48)
        fast = ask(engine, target, prompt, Speculation(draft=draft), n=48)
        assert fast.content == plain.content
        assert fast.timings.speculation.accepted > 0
        with pytest.raises(InvalidOptionError, match="cannot draft for"):
            ask(engine, target, prompt, Speculation(draft=extra_model("gemma-3-270m")), n=4)
    finally:
        engine.close()


def test_the_gateway_speculates_per_model_config_and_counts_it(tmp_path, smollm2_path):
    """Server-side config decides: the configured name speculates and /metrics counts it; a
    client cannot switch speculation on, or point it at a file, from the request body."""
    import httpx

    from support.gateway_server import GatewayServer

    settings = Settings(
        home=tmp_path,
        keep_alive=-1,
        num_ctx=512,
        aliases={"copy": smollm2_path},
        speculative={"models": {"copy": "lookup"}},
    )
    with GatewayServer(settings) as srv:
        body = {
            "model": "copy",
            "stream": False,
            "options": {"temperature": 0, "num_predict": 24},
            "messages": [{"role": "user", "content": REWRITE}],
        }
        assert httpx.post(srv.url + "/api/chat", json=body, timeout=300).status_code == 200
        metrics = httpx.get(srv.url + "/metrics").text
        drafted = [line for line in metrics.splitlines() if line.startswith("lmgauge_speculative_drafted_tokens_total")]
        assert drafted and 'model="copy"' in drafted[0] and float(drafted[0].split()[-1]) > 0
        assert 'lmgauge_speculative_seconds_total{model="copy",phase="verify"}' in metrics
        hostile = {
            **body,
            "model": "smollm2",
            "speculation": {"draft": "/etc/passwd"},
            "options": {"temperature": 0, "num_predict": 4},
        }
        assert httpx.post(srv.url + "/api/chat", json=hostile, timeout=300).status_code == 200  # field ignored
        bad_option = {**hostile, "options": {"draft_model": "/etc/passwd"}}
        answer = httpx.post(srv.url + "/api/chat", json=bad_option, timeout=300)
        assert answer.status_code == 400 and "draft_model" in answer.json()["error"]
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'lmgauge_speculative_drafted_tokens_total{model="smollm2"}' not in metrics
