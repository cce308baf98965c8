"""The response cache: keys, determinism, the semantic guards, TTL and size limits, on SQLite and
on a real redis-server started for the test (shared by two cache instances, as by two gateway
replicas), and the labeled pair evaluation."""

from __future__ import annotations

import time

import pytest

from lmgauge.cache import (
    RedisBackend,
    ResponseCache,
    SQLiteBackend,
    entities_in,
    guard_mismatch,
    is_deterministic,
    negations_in,
    numbers_in,
    request_key,
)
from lmgauge.cache.evaluation import load_pairs, rates, run_pairs
from lmgauge.config import CacheSettings
from lmgauge.embedding import make_embedder
from lmgauge.errors import InvalidOptionError
from lmgauge.store import Store
from lmgauge.types import ChatRequest, Message, Options, Result, Timings


@pytest.fixture(scope="module")
def embedder():
    return make_embedder("wordllama")


def ask(question, temperature=0.0, model="m", system=None, **options):
    messages = ([Message("system", system)] if system else []) + [Message("user", question)]
    return ChatRequest(model=model, messages=messages, options=Options(temperature=temperature, **options))


def answer(text="an answer", done_reason="stop"):
    return Result(model="m", content=text, done_reason=done_reason, timings=Timings(prompt_tokens=5, output_tokens=3))


@pytest.fixture(params=["sqlite", "redis"])
def make_cache(request, tmp_path, embedder, redis_url):
    made = []

    def make(**settings):
        cs = CacheSettings(**settings)
        if request.param == "sqlite":
            backend = SQLiteBackend(Store(tmp_path / "cache.db"))
        else:
            backend = RedisBackend(redis_url, prefix=f"test:{tmp_path.name}:")
        cache = ResponseCache(backend, cs, embedder)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.clear()


# --- keys -----------------------------------------------------------------------------------------------


def test_key_ignores_whitespace_option_order_and_engine_only_options():
    a = ChatRequest("m", [Message("user", "What  is\n2+2?")], Options(temperature=0, seed=1, num_thread=4))
    b = ChatRequest("m", [Message("user", "What is 2+2? ")], Options(seed=1, temperature=0, num_batch=64))
    assert request_key(a) == request_key(b)


@pytest.mark.parametrize(
    "change",
    [
        dict(model="other"),
        dict(question="What is 2+3?"),
        dict(temperature=0.5),
        dict(system="be brief"),
    ],
)
def test_key_changes_with_what_changes_the_answer(change):
    base = dict(question="What is 2+2?", temperature=0.0, model="m", system=None)
    assert request_key(ask(**base)) != request_key(ask(**{**base, **change}))


def test_format_is_part_of_the_key():
    plain, js = ask("list three colors"), ask("list three colors")
    js.format = "json"
    assert request_key(plain) != request_key(js)


def test_only_deterministic_requests_count_as_deterministic():
    assert is_deterministic(Options(temperature=0))
    assert is_deterministic(Options(temperature=0.8, seed=7))
    assert not is_deterministic(Options(temperature=0.8))
    assert not is_deterministic(Options())  # Ollama's default temperature is 0.8


# --- guards ---------------------------------------------------------------------------------------------


def test_numbers_are_read_in_digits_and_words():
    assert numbers_in("Who won in 2018 and 1,500 fans?") == [1500, 2018]  # sorted
    assert numbers_in("give me three ideas") == [3]
    assert numbers_in("the 10th Fibonacci number") == [10]


def test_negations_count_words_contractions_and_prefix_antonyms():
    assert negations_in("Is it safe?") == 0
    assert negations_in("Why doesn't it work?") == 1
    assert negations_in("Is it unsafe?", "Is it safe?") == 1
    assert negations_in("Is it unsafe?", "Is it dangerous?") == 0  # "unsafe" alone is just a word


def test_entities_skip_ordinary_sentence_starts_and_i():
    assert entities_in("What is the capital of Austria?") == {"austria"}
    assert entities_in("How do I install Docker on Ubuntu?") == {"docker", "ubuntu"}
    assert entities_in("Paris is big. Tell me more.") == {"paris"}
    assert entities_in("What's water's chemical formula?") == set()
    assert entities_in("Translate 'good morning' please") == {"good morning"}


@pytest.mark.parametrize(
    "a, b",
    [
        ("Is ibuprofen safe during pregnancy?", "Is ibuprofen not safe during pregnancy?"),
        ("Is it safe to eat raw eggs?", "Is it unsafe to eat raw eggs?"),
        ("What were the tech trends of 2023?", "What were the tech trends of 2024?"),
        ("Convert 5 km to miles", "Convert 50 km to miles"),
        ("What is the capital of Austria?", "What is the capital of Australia?"),
        ("How do I sort a list in python?", "How do I sort a list in java?"),
        ("What is the boiling point of ethanol?", "What is the boiling point of methanol?"),
        ("How do I install numpy?", "How do I uninstall numpy?"),
    ],
)
def test_guards_refuse_near_misses(a, b, embedder):
    assert guard_mismatch(a, b, embedder) is not None
    assert guard_mismatch(b, a, embedder) is not None


@pytest.mark.parametrize(
    "a, b",
    [
        ("What is the capital of Australia?", "what's the capital city of Australia"),
        ("How do I fix a leaking faucet?", "How can I repair a leaky faucet?"),
        ("How do I undo the last git commit?", "how can i undo my last commit in git"),
    ],
)
def test_guards_let_paraphrases_through(a, b, embedder):
    assert guard_mismatch(a, b, embedder) is None


# --- the cache on both backends -----------------------------------------------------------------------------


def test_exact_hit_returns_the_stored_answer(make_cache):
    cache = make_cache()
    assert cache.lookup(ask("What is 2+2?")) is None
    assert cache.store(ask("What is 2+2?"), answer("4"))
    hit = cache.lookup(ask("What  is 2+2?"))
    assert hit.kind == "exact" and hit.result.content == "4" and hit.result.engine == "cache"
    assert hit.result.timings.output_tokens == 3
    assert cache.stats().entries == 1 and cache.stats().hits == 1


def test_sampled_requests_are_cached_only_when_forced(make_cache):
    cache = make_cache()
    sampled = ask("Tell me a joke", temperature=0.9)
    assert not cache.store(sampled, answer("joke"))
    assert cache.lookup(sampled) is None
    assert cache.store(sampled, answer("joke"), force=True)
    assert cache.lookup(sampled) is None  # a lookup must be forced too
    assert cache.lookup(sampled, force=True).result.content == "joke"


def test_cut_off_answers_are_not_cached(make_cache):
    cache = make_cache()
    assert not cache.store(ask("Write an essay"), answer("It was", done_reason="length"))


def test_semantic_hit_on_a_paraphrase_and_refusal_on_a_near_miss(make_cache):
    cache = make_cache()
    cache.store(ask("What is the capital of Australia?"), answer("Canberra"))
    hit = cache.lookup(ask("what's the capital city of Australia"))
    assert hit.kind == "semantic" and hit.result.content == "Canberra" and hit.similarity >= 0.75
    assert hit.question == "What is the capital of Australia?"
    assert cache.lookup(ask("What is the capital of Austria?")) is None


def test_semantic_hits_need_the_same_conversation_and_options(make_cache):
    cache = make_cache()
    cache.store(ask("What is the capital of Australia?", system="answer in French"), answer("Canberra"))
    assert cache.lookup(ask("what's the capital city of Australia")) is None
    assert cache.lookup(ask("what's the capital city of Australia", system="answer in French")) is not None
    assert cache.lookup(ask("what's the capital city of Australia", system="answer in French", num_predict=5)) is None


def test_semantic_lookups_can_be_turned_off(make_cache):
    cache = make_cache(semantic=False)
    cache.store(ask("What is the capital of Australia?"), answer("Canberra"))
    assert cache.lookup(ask("what's the capital city of Australia")) is None
    assert cache.lookup(ask("What is the capital of Australia?")) is not None


def test_entries_expire(make_cache):
    cache = make_cache(ttl=1.0)  # a second for the first lookup to come, even on a busy machine
    cache.store(ask("What is 2+2?"), answer("4"))
    assert cache.lookup(ask("What is 2+2?")) is not None
    time.sleep(1.15)
    assert cache.lookup(ask("What is 2+2?")) is None
    assert cache.lookup(ask("what is 2 + 2")) is None  # not semantically either


def test_size_limit_evicts_the_least_recently_used(make_cache):
    cache = make_cache(max_entries=3)
    for i in range(3):
        cache.store(ask(f"question {i}"), answer(str(i)))
        time.sleep(0.01)
    cache.lookup(ask("question 0"))  # used: now the most recent
    time.sleep(0.01)
    cache.store(ask("question 3"), answer("3"))
    assert cache.stats().entries == 3
    assert cache.lookup(ask("question 1")) is None
    assert [cache.lookup(ask(f"question {i}")) is not None for i in (0, 2, 3)] == [True] * 3


def test_disabled_cache_does_nothing(make_cache):
    cache = make_cache(enabled=False)
    assert not cache.store(ask("What is 2+2?"), answer("4"))
    assert cache.lookup(ask("What is 2+2?")) is None


def test_two_replicas_share_one_redis_cache(redis_url, embedder):
    prefix = "test:replicas:"
    first = ResponseCache(RedisBackend(redis_url, prefix=prefix), CacheSettings(), embedder)
    second = ResponseCache(RedisBackend(redis_url, prefix=prefix), CacheSettings(), embedder)
    try:
        first.store(ask("Who wrote Hamlet?"), answer("Shakespeare"))
        assert second.lookup(ask("Who wrote Hamlet?")).result.content == "Shakespeare"
        assert second.lookup(ask("Who is the author of Hamlet?")).kind == "semantic"
    finally:
        first.clear()


def test_unreachable_redis_is_a_clear_error(closed_url):
    port = closed_url.rsplit(":", 1)[1]
    with pytest.raises(InvalidOptionError, match="redis-server"):
        RedisBackend(f"redis://127.0.0.1:{port}/0")


def test_from_settings_uses_the_store_by_default(settings):
    cache = ResponseCache.from_settings(settings)
    assert cache.backend.name == "sqlite" and cache.backend.store.path == settings.db_path


# --- the labeled evaluation --------------------------------------------------------------------------------


def test_pair_set_is_large_and_labeled():
    pairs = load_pairs()
    assert len(pairs) >= 200
    kinds = {p.kind for p in pairs}
    assert kinds == {"paraphrase", "negation", "number", "entity"}
    assert all(p.should_hit == (p.kind == "paraphrase") for p in pairs)


def test_semantic_cache_meets_its_targets_on_the_pairs(tmp_path, embedder):
    cache = ResponseCache(SQLiteBackend(Store(tmp_path / "eval.db")), CacheSettings(), embedder)
    outcomes = run_pairs(cache, load_pairs())
    r = rates(outcomes)
    assert r["paraphrase_hit_rate"] >= 0.8
    assert r["false_hit_rate"] <= 0.01
    # the real lookups agree with the (similarity, guard) pair summary used for the threshold sweep
    assert rates(outcomes, CacheSettings().similarity) == r


def test_eval_cache_command_reports_rates_sweep_and_latency():
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "lmgauge", "eval", "cache", "--json"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["pairs"] == len(load_pairs())
    assert data["overall"]["paraphrase_hit_rate"] >= 0.8 and data["overall"]["false_hit_rate"] <= 0.01
    assert [row["threshold"] for row in data["sweep"]] == sorted(row["threshold"] for row in data["sweep"])
    assert data["exact_hit_ms"]["n"] == 1000 and data["exact_hit_ms"]["p50"] > 0


def test_an_engines_embedding_model_can_serve_the_cache(start_standin):
    import numpy as np

    from lmgauge.client import Client
    from lmgauge.config import Settings
    from support.standins import OllamaStandin

    server = start_standin(OllamaStandin, embedding_dim=16)
    with Client(Settings(ollama_host=server.url)) as client:
        embedder = make_embedder("ollama:standin-embed", client)
        vectors = embedder.embed(["one question", "another one"])
        assert vectors.shape == (2, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        cache = ResponseCache(SQLiteBackend(Store(client.settings.db_path)), CacheSettings(), embedder)
        cache.store(ask("Who wrote Hamlet?"), answer("Shakespeare"))
        assert cache.lookup(ask("Who wrote Hamlet?")).kind == "exact"
    assert server.received("/api/embed")
