"""The gateway with the real router and response cache plugged in (routing.gateway_router,
cache.gateway_cache): `auto` picks a tier per request, repeated deterministic requests are
answered from the cache (SQLite, or Redis shared by two gateway replicas), sampled ones never."""

from __future__ import annotations

import httpx
import pytest

from lmgauge.config import CacheSettings, GatewaySettings, RoutingSettings, Settings, UpstreamSettings
from support.gateway_server import GatewayServer, wait_for

SMALL, LARGE = "small-model", "large-model"
EASY = "hi there"
HARD = (
    "Prove that the square root of 2 is irrational, then write a Python function that checks the first "
    "100 digits of its decimal expansion and explain its time complexity."
)


def two_model_standin():
    """One Ollama stand-in serving two models; each answer names the model that wrote it."""
    from support.standins import OllamaStandin

    return OllamaStandin(models=(SMALL, LARGE), reply=lambda body: f"answered by {body['model']}").start()


def upstream_settings(home, url: str, **kw) -> Settings:
    upstreams = [UpstreamSettings(model=m, urls=[url]) for m in (SMALL, LARGE)]
    return Settings(home=home, gateway=GatewaySettings(upstreams=upstreams, **kw.pop("gateway", {})), **kw)


def chat(url: str, content: str, model: str = "auto", **options) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": False, "options": options}
    return httpx.post(url + "/api/chat", json=body, timeout=30)


def model_calls(standin) -> int:
    return len([r for r in standin.requests if r.path in ("/api/chat", "/api/generate")])


def test_auto_routes_easy_questions_to_the_small_tier_and_hard_ones_up(tmp_path):
    standin = two_model_standin()
    try:
        settings = upstream_settings(
            tmp_path, standin.url, routing=RoutingSettings(tiers={"small": SMALL, "large": LARGE})
        )
        with GatewayServer(settings) as srv:
            assert chat(srv.url, EASY).json()["message"]["content"] == f"answered by {SMALL}"
            assert chat(srv.url, HARD).json()["message"]["content"] == f"answered by {LARGE}"
            generate = httpx.post(
                srv.url + "/api/generate", json={"model": "auto", "prompt": HARD, "stream": False}, timeout=30
            ).json()
            assert generate["response"] == f"answered by {LARGE}" and generate["model"] == "auto"
            openai = httpx.post(
                srv.url + "/v1/chat/completions",
                timeout=30,
                json={"model": "auto", "messages": [{"role": "user", "content": EASY}]},
            ).json()
            assert openai["choices"][0]["message"]["content"] == f"answered by {SMALL}"
    finally:
        standin.stop()


def test_auto_without_tiers_is_the_default_model_as_in_the_cli(tmp_path):
    """One meaning of `auto` everywhere (issue 20): without [routing] tiers it is the default
    model, as `lmgauge run auto` and `route ask` answer (docs/spend-less.md)."""
    standin = two_model_standin()
    try:
        with GatewayServer(upstream_settings(tmp_path, standin.url, default_model=LARGE)) as srv:
            r = chat(srv.url, EASY)
            assert r.status_code == 200 and r.json()["message"]["content"] == f"answered by {LARGE}"
    finally:
        standin.stop()


def test_the_cache_is_off_unless_the_gateway_asks_for_it(tmp_path):
    standin = two_model_standin()
    try:
        with GatewayServer(upstream_settings(tmp_path, standin.url)) as srv:
            assert srv.gateway.cache is None
            for _ in range(2):
                chat(srv.url, "What is the capital of France?", model=SMALL, temperature=0)
            assert model_calls(standin) == 2
    finally:
        standin.stop()


def test_repeated_deterministic_requests_come_from_the_cache(tmp_path):
    standin = two_model_standin()
    try:
        settings = upstream_settings(tmp_path, standin.url, gateway={"cache": True})
        with GatewayServer(settings) as srv:
            question = "What is the capital of France?"
            first = chat(srv.url, question, model=SMALL, temperature=0).json()
            # the gateway stores an answer after sending it (off the response path)
            assert wait_for(lambda: srv.gateway.cache.cache.stats().entries == 1, timeout=10)
            second = chat(srv.url, question, model=SMALL, temperature=0).json()
            assert first["message"] == second["message"] and model_calls(standin) == 1
            # a paraphrase is a semantic hit; a changed number is not (the guard)
            chat(srv.url, "what's the capital of France?", model=SMALL, temperature=0)
            assert model_calls(standin) == 1
            chat(srv.url, "What is 12 times 7?", model=SMALL, temperature=0)
            chat(srv.url, "What is 12 times 8?", model=SMALL, temperature=0)
            assert model_calls(standin) == 3
            # sampled answers are never frozen into the cache; another model never shares an entry
            chat(srv.url, question, model=SMALL, temperature=0.8)
            chat(srv.url, question, model=SMALL, temperature=0.8)
            chat(srv.url, question, model=LARGE, temperature=0)
            assert model_calls(standin) == 6
            # /api/generate is the same conversation as a chat with the prompt as the user's message
            generate = httpx.post(
                srv.url + "/api/generate",
                timeout=30,
                json={"model": SMALL, "prompt": question, "stream": False, "options": {"temperature": 0}},
            ).json()
            assert generate["response"] == first["message"]["content"] and model_calls(standin) == 6
            metrics = httpx.get(srv.url + "/metrics").text
            assert f'lmgauge_cache_hits_total{{model="{SMALL}"}} 3.0' in metrics
    finally:
        standin.stop()


def test_two_gateway_replicas_share_answers_through_redis(tmp_path, redis_url):
    standin = two_model_standin()
    shared = CacheSettings(backend="redis", redis_url=redis_url.rsplit("/", 1)[0] + "/3", semantic=False)
    try:
        a = upstream_settings(tmp_path / "a", standin.url, gateway={"cache": True}, cache=shared)
        b = upstream_settings(tmp_path / "b", standin.url, gateway={"cache": True}, cache=shared)
        with GatewayServer(a) as first, GatewayServer(b) as second:
            first.gateway.cache.cache.clear()
            answer = chat(first.url, "Name a prime number.", model=SMALL, seed=7).json()["message"]
            assert wait_for(lambda: first.gateway.cache.cache.stats().entries == 1, timeout=10)
            assert chat(second.url, "Name a prime number.", model=SMALL, seed=7).json()["message"] == answer
            assert model_calls(standin) == 1
    finally:
        standin.stop()


@pytest.mark.integration
def test_overflow_compact_trims_old_turns_with_the_real_tokenizer(tmp_path):
    """`[context] overflow = "compact"` on the embedded model: a conversation over the window is
    cut to whole recent turns that fit (counted by the model's own tokenizer), answered, and
    logged as compacted; a single message over the window is still refused, never truncated."""
    from lmgauge.config import ContextSettings
    from lmgauge.store import Store

    settings = Settings(home=tmp_path, keep_alive=-1, context=ContextSettings(overflow="compact"))
    turns = []
    for i in range(12):
        turns += [
            {"role": "user", "content": f"Tell me fact number {i} about the ocean. " + "waves " * 40},
            {"role": "assistant", "content": f"Fact {i}: the ocean is deep. " + "water " * 40},
        ]
    messages = [{"role": "system", "content": "You are brief."}, *turns, {"role": "user", "content": "Say hi"}]
    options = {"num_ctx": 512, "num_predict": 4, "temperature": 0}
    with GatewayServer(settings) as srv:
        r = httpx.post(
            srv.url + "/api/chat",
            timeout=120,
            json={"model": "smollm2", "messages": messages, "stream": False, "options": options},
        )
        assert r.status_code == 200, r.text
        used, window = map(int, r.headers["x-lmgauge-context"].split("/"))
        assert window == 512 and 0 < used < 512 and used == r.json()["prompt_eval_count"]
        too_long = [{"role": "user", "content": "waves " * 1000}]
        r = httpx.post(
            srv.url + "/api/chat",
            timeout=120,
            json={"model": "smollm2", "messages": too_long, "stream": False, "options": options},
        )
        assert r.status_code == 400 and "512" in r.json()["error"]
        srv.wait_logged(2)
        rows = Store(settings.db_path).requests(limit=2)
        assert [(r["status"], r["compacted"]) for r in rows] == [("overflow", 0), ("ok", 1)]
