"""The gateway's `auto` escalates as `lmgauge run auto` does: when the tier the router picked
fails (an engine error) or its answer fails the check (here: a refusal), the next tier answers.
Real HTTP through a real gateway, two stand-in Ollama servers as the tiers, the real router;
the escalation must show in the request log and /metrics, and the client must only ever see the
answer it gets (the refusal never reaches a stream)."""

from __future__ import annotations

import json

import httpx

from lmgauge.config import GatewaySettings, RoutingSettings, Settings, UpstreamSettings
from lmgauge.store import Store
from support.gateway_server import GatewayServer

SMALL, LARGE = "small-model", "large-model"
EASY = "hi there"  # the router sends it to the small tier (test_gateway_hooks.py checks that)
REFUSAL = "I'm sorry, but I can't help with that."
GOOD = "Hello! How can I help you today?"


def tiers(home, small_url: str, large_url: str, escalate: bool = True) -> Settings:
    upstreams = [UpstreamSettings(model=SMALL, urls=[small_url]), UpstreamSettings(model=LARGE, urls=[large_url])]
    return Settings(
        home=home,
        gateway=GatewaySettings(upstreams=upstreams),
        routing=RoutingSettings(tiers={"small": SMALL, "large": LARGE}, escalate=escalate),
    )


def standin(model: str, reply: str):
    from support.standins import OllamaStandin

    return OllamaStandin(models=(model,), reply=reply).start()


def calls(server) -> int:
    return len([r for r in server.requests if r.path in ("/api/chat", "/api/generate")])


def escalations(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("lmgauge_escalations_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len("lmgauge_escalations_total") :]] = float(value)
    return out


def test_a_refusal_from_the_small_tier_is_answered_by_the_large_one(tmp_path):
    small, large = standin(SMALL, REFUSAL), standin(LARGE, GOOD)
    try:
        settings = tiers(tmp_path, small.url, large.url)
        with GatewayServer(settings) as srv:
            body = {"model": "auto", "messages": [{"role": "user", "content": EASY}], "stream": False}
            r = httpx.post(srv.url + "/api/chat", json=body, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["message"]["content"] == GOOD and r.json()["model"] == "auto"
            assert (calls(small), calls(large)) == (1, 1)

            # Streamed, the refusal is held back: the client's stream holds the large tier's answer only.
            with httpx.stream("POST", srv.url + "/api/chat", json={**body, "stream": True}, timeout=30) as s:
                lines = [json.loads(line) for line in s.iter_lines() if line]
            assert "".join(x["message"]["content"] for x in lines) == GOOD
            assert lines[-1]["done"] and (calls(small), calls(large)) == (2, 2)

            assert escalations(srv.url) == {'{reason="failed_check",tier="small"}': 2.0}
            srv.wait_logged(4)
            rows = Store(settings.db_path).requests(model="auto", limit=10)[::-1]  # oldest first
            assert [r["status"] for r in rows] == ["escalated", "ok", "escalated", "ok"]
            left, answered = rows[0], rows[1]
            assert left["extra"]["route"]["tier"] == "small" and left["upstream"] == small.url
            assert left["extra"]["route"]["attempts"] == [
                {"tier": "small", "model": SMALL, "status": "failed_check", "reason": "refused to answer"}
            ]
            assert answered["extra"]["route"]["tier"] == "large" and answered["upstream"] == large.url
            assert answered["extra"]["route"]["attempts"] == left["extra"]["route"]["attempts"]
            assert answered["output_tokens"] == len(GOOD.split())
    finally:
        small.stop()
        large.stop()


def test_an_engine_error_on_the_small_tier_is_answered_by_the_large_one(tmp_path):
    small, large = standin(SMALL, GOOD), standin(LARGE, GOOD + " (large)")
    small.faults.status = 500  # the small tier's server fails every request
    try:
        settings = tiers(tmp_path, small.url, large.url)
        with GatewayServer(settings) as srv:
            r = httpx.post(
                srv.url + "/v1/chat/completions",
                timeout=30,
                json={"model": "auto", "messages": [{"role": "user", "content": EASY}]},
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == GOOD + " (large)"
            assert calls(large) == 1 and len(small.requests) >= 1
            assert escalations(srv.url) == {'{reason="error",tier="small"}': 1.0}
            srv.wait_logged(2)
            rows = Store(settings.db_path).requests(model="auto", limit=10)[::-1]
            assert [r["status"] for r in rows] == ["escalated", "ok"]
            attempt = rows[1]["extra"]["route"]["attempts"][0]
            assert attempt["tier"] == "small" and attempt["status"] == "error"
            assert "every upstream for small-model failed" in attempt["reason"]
            assert rows[0]["error"] and "500" in rows[0]["error"]
    finally:
        small.stop()
        large.stop()


def test_the_last_tier_is_not_checked_and_escalation_off_keeps_the_first_answer(tmp_path):
    """Nothing is left above the last tier: its answer is the answer, as in `run auto`. With
    `[routing] escalate = false` the chosen tier's answer stands and its error is the client's."""
    small, large = standin(SMALL, REFUSAL), standin(LARGE, REFUSAL)
    try:
        settings = tiers(tmp_path, small.url, large.url)
        with GatewayServer(settings) as srv:
            body = {"model": "auto", "messages": [{"role": "user", "content": EASY}], "stream": False}
            r = httpx.post(srv.url + "/api/chat", json=body, timeout=30)
            assert r.status_code == 200 and r.json()["message"]["content"] == REFUSAL
            assert (calls(small), calls(large)) == (1, 1)
    finally:
        small.stop()
        large.stop()

    small, large = standin(SMALL, REFUSAL), standin(LARGE, GOOD)
    small_failing = standin(SMALL, GOOD)
    small_failing.faults.status = 500
    try:
        with GatewayServer(tiers(tmp_path / "a", small.url, large.url, escalate=False)) as srv:
            body = {"model": "auto", "messages": [{"role": "user", "content": EASY}], "stream": False}
            r = httpx.post(srv.url + "/api/chat", json=body, timeout=30)
            assert r.status_code == 200 and r.json()["message"]["content"] == REFUSAL
            assert calls(large) == 0 and escalations(srv.url) == {}
        with GatewayServer(tiers(tmp_path / "b", small_failing.url, large.url, escalate=False)) as srv:
            r = httpx.post(srv.url + "/api/chat", json=body, timeout=30)
            assert r.status_code == 502 and "every upstream" in r.json()["error"]
            assert calls(large) == 0
    finally:
        small.stop()
        large.stop()
        small_failing.stop()


def test_a_prompt_over_the_small_tiers_window_goes_to_the_large_tier(tmp_path):
    """The guard counts the prompt exactly (the stand-ins share SmolLM2's vocabulary here) and
    refuses it for the small tier's 64-token window: a larger window may fit it, so the request
    escalates before any model is called, as a ContextOverflowError does in `run auto`."""
    small, large = standin(SMALL, GOOD), standin(LARGE, GOOD + " (large)")
    try:
        upstreams = [
            UpstreamSettings(model=SMALL, urls=[small.url], num_ctx=64, tokenizer="smollm2"),
            UpstreamSettings(model=LARGE, urls=[large.url], num_ctx=4096, tokenizer="smollm2"),
        ]
        settings = Settings(
            home=tmp_path,
            gateway=GatewaySettings(upstreams=upstreams),
            routing=RoutingSettings(tiers={"small": SMALL, "large": LARGE}),
        )
        system = "You are a helpful assistant who answers briefly. " * 20  # ~200 tokens; the router reads the user turn
        with GatewayServer(settings) as srv:
            body = {
                "model": "auto",
                "stream": False,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": EASY}],
            }
            r = httpx.post(srv.url + "/api/chat", json=body, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["message"]["content"] == GOOD + " (large)"
            assert (calls(small), calls(large)) == (0, 1)
            assert escalations(srv.url) == {'{reason="error",tier="small"}': 1.0}
            srv.wait_logged(2)
            rows = Store(settings.db_path).requests(model="auto", limit=10)[::-1]
            assert [r["status"] for r in rows] == ["escalated", "ok"]
            assert "context window" in rows[1]["extra"]["route"]["attempts"][0]["reason"]
            assert rows[1]["extra"]["window"] == 4096
    finally:
        small.stop()
        large.stop()
