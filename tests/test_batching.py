"""Continuous batching in the embedded engine, with the real model: same answers alone or in a
batch (whenever the other requests arrive), cancellation isolated to one stream, shared prompt
prefixes computed once."""

import itertools
import threading

import pytest

from lmgauge.config import Settings
from lmgauge.engines.base import collect
from lmgauge.engines.llamacpp import LlamaCppEngine
from lmgauge.types import ChatRequest, Message, Options

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def batch_engine():
    engine = LlamaCppEngine(Settings(parallel=8, keep_alive=-1, num_ctx=2048))
    yield engine
    engine.close()


def request(path, text, n=24, system=None):
    messages = ([Message("system", system)] if system else []) + [Message("user", text)]
    return ChatRequest(model=path, messages=messages, options=Options(temperature=0, num_predict=n))


def run_concurrently(engine, requests):
    results, errors = [None] * len(requests), []

    def worker(i):
        try:
            results[i] = collect(engine.chat(requests[i]))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def join_one_by_one(engine, requests):
    """Start each request after the previous one has begun answering, so every newcomer's prompt
    is evaluated beside running streams and its cells land among theirs; returns the streams,
    each with its first chunk put back."""
    streams = []
    for r in requests:
        stream = engine.chat(r)
        first = next(stream)
        streams.append(itertools.chain([first], stream))
    return streams


def slots(engine):
    (runner,) = [r for r in engine._runners.values() if not r.embedding]
    return runner.scheduler.slots


def test_greedy_answers_are_identical_alone_and_in_a_batch_of_8(batch_engine, smollm2_path):
    reqs = [request(smollm2_path, f"Give one fact about the number {i}.") for i in range(8)]
    alone = [collect(batch_engine.chat(r)).content for r in reqs]
    together = run_concurrently(batch_engine, reqs)
    assert [r.content for r in together] == alone


def test_more_requests_than_slots_all_complete(batch_engine, smollm2_path):
    reqs = [request(smollm2_path, f"Say the word number {i}.", n=6) for i in range(12)]
    results = run_concurrently(batch_engine, reqs)
    assert all(r.timings.output_tokens > 0 for r in results)


def test_greedy_answers_do_not_depend_on_when_the_others_arrive(batch_engine, smollm2_path):
    # Arrivals a few steps apart used to change answers: in one KV cache shared by all
    # sequences, a newcomer's cells filled holes in front of older cells, and attention summed
    # them in another order (4 requests: 5 of 6 such runs parted from the answers given alone).
    reqs = [request(smollm2_path, f"Write a short story about planet number {i}.", n=32) for i in range(4)]
    alone = [collect(batch_engine.chat(r)).content for r in reqs]
    staggered = [collect(s).content for s in join_one_by_one(batch_engine, reqs)]
    assert staggered == alone
    assert all(s.job is None for s in slots(batch_engine))


def test_cancelling_one_stream_frees_its_cells_and_leaves_the_others_intact(batch_engine, smollm2_path):
    import llama_cpp.llama_cpp as L

    reqs = [request(smollm2_path, f"Write a short story about animal number {i}.", n=32) for i in range(4)]
    alone = [collect(batch_engine.chat(r)).content for r in reqs]

    victim = batch_engine.chat(request(smollm2_path, "Write an endless story.", n=400))
    next(victim)  # it is decoding in a slot now
    victim_slot = next(s for s in slots(batch_engine) if s.job is not None)
    first_two = join_one_by_one(batch_engine, reqs[:2])
    victim.close()  # the client disconnects mid-stream, while two others are answering
    streams = first_two + join_one_by_one(batch_engine, reqs[2:])  # these may take its slot
    assert [collect(s).content for s in streams] == alone

    runner = next(r for r in batch_engine._runners.values() if not r.embedding)
    if victim_slot.job is None and not victim_slot.cache:
        assert L.llama_memory_seq_pos_max(L.llama_get_memory(runner.ctx), victim_slot.seq) == -1
    assert all(s.job is None for s in slots(batch_engine))


def test_a_shared_system_prompt_is_evaluated_once(batch_engine, smollm2_path):
    system = "You are a meticulous assistant. " + " ".join(f"Rule {i}: be precise about item {i}." for i in range(60))
    reqs = [request(smollm2_path, f"Question {i}: what is {i} plus {i}?", n=8, system=system) for i in range(8)]
    results = run_concurrently(batch_engine, reqs)
    prompt = results[0].timings.prompt_tokens
    shared = len(batch_engine.chat_tokens(smollm2_path, [Message("system", system)])) - 8
    assert prompt > 500
    cached = sorted(r.timings.cached_tokens for r in results)
    # at most one request pays for the system prompt; the others reuse its cells
    assert sum(1 for c in cached if c >= shared) >= 7
    for r in results:
        assert r.timings.prompt_eval_tokens == r.timings.prompt_tokens - r.timings.cached_tokens
