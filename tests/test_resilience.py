"""Timeouts, retries, circuit breakers and fallbacks against real local servers that fail on
purpose (the stand-ins' fault knobs: 500, hang, hang mid-stream, drop mid-stream)."""

from __future__ import annotations

import random
import threading

import pytest

from lmgauge.client import Client
from lmgauge.config import ResilienceSettings, Settings
from lmgauge.errors import (
    EngineBusyError,
    EngineError,
    EngineUnavailableError,
    InvalidOptionError,
)
from lmgauge.resilience import (
    CircuitBreaker,
    CircuitOpenError,
    ResilientClient,
    UpstreamTimeoutError,
    guarded_stream,
)
from lmgauge.types import Chunk
from support.standins import OllamaStandin, OpenAIStandin

MESSAGES = [{"role": "user", "content": "hello"}]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def policy(**kw):
    base = dict(
        retries=2,
        backoff=0.01,
        backoff_max=0.05,
        breaker_failures=3,
        breaker_reset=5.0,
        first_token_timeout=5.0,
        total_timeout=10.0,
    )
    return ResilienceSettings(**{**base, **kw})


def resilient(server, events=None, **kw):
    client = Client(Settings(ollama_host=server.url, request_timeout=30))
    return ResilientClient(client, policy(**kw), listener=events.append if events is not None else None)


# --- the breaker on its own ------------------------------------------------------------------------------


def test_breaker_opens_after_n_failures_then_half_opens_for_one_trial():
    clock = FakeClock()
    b = CircuitBreaker(failures=3, reset_s=5, clock=clock)
    assert b.allow() and not b.failure() and not b.failure()
    assert b.state == "closed"
    assert b.failure() and b.state == "open" and not b.allow()
    clock.now += 4.9
    assert not b.allow() and b.retry_in() == pytest.approx(0.1)
    clock.now += 0.2
    assert b.state == "half_open"
    assert b.allow() and not b.allow()  # one trial at a time
    assert b.failure() and b.state == "open"  # the trial failed: open again, a new wait
    clock.now += 5.1
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.failures == 0 and b.allow()


def test_breaker_counts_consecutive_failures_only():
    b = CircuitBreaker(failures=3, reset_s=5, clock=FakeClock())
    b.failure(), b.failure(), b.success(), b.failure(), b.failure()
    assert b.state == "closed"


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    rc = ResilientClient(Client(Settings()), policy(backoff=1.0, backoff_max=8.0), rng=random.Random(1))
    for attempt, step in [(0, 1), (1, 2), (2, 4), (3, 8), (6, 8)]:
        delays = [rc.backoff(attempt) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len({round(d, 6) for d in delays}) > 1


def test_guarded_stream_passes_chunks_and_errors_through():
    def ok():
        yield Chunk("a")
        yield Chunk("b")
        yield Chunk(done=True, result="r")

    assert [c.content for c in guarded_stream(ok, 1, 1, "m")] == ["a", "b", ""]

    def broken():
        yield Chunk("a")
        raise EngineError("boom")

    with pytest.raises(EngineError, match="boom"):
        list(guarded_stream(broken, 1, 1, "m"))


def test_guarded_stream_times_out_a_silent_engine():
    """The engine stays silent until the test releases it: had the guard waited for it, the stream
    would end normally (no error); the error names the first-token limit, not the total one."""
    release = threading.Event()

    def silent():
        release.wait(60)  # a hang guard only: the test releases it as soon as the guard gave up
        yield Chunk(done=True)

    try:
        with pytest.raises(UpstreamTimeoutError, match="did not start answering within the first_token_timeout"):
            list(guarded_stream(silent, 0.3, 10, "m"))
    finally:
        release.set()


# --- against real servers ----------------------------------------------------------------------------------


def test_500_is_retried_with_backoff_then_succeeds(start_standin):
    server = start_standin(OllamaStandin, reply="recovered")
    server.faults.status, server.faults.times = 500, 2
    events = []
    with resilient(server, events) as lm:
        result = lm.chat("ollama:standin", MESSAGES)
    assert result.content == "recovered"
    assert len(server.received("/api/chat")) == 3
    assert [e.kind for e in events] == ["retry", "retry"]


def test_repeated_500_opens_the_breaker_and_then_fails_fast(start_standin):
    server = start_standin(OllamaStandin)
    server.faults.status = 500
    events = []
    with resilient(server, events, retries=5) as lm:
        with pytest.raises(EngineError, match="500"):
            lm.chat("ollama:standin", MESSAGES)
        assert len(server.received("/api/chat")) == 3  # the breaker opened at the 3rd failure: no more tries
        assert "breaker_open" in [e.kind for e in events]
        assert list(lm.breaker_states().values()) == ["open"]
        with pytest.raises(CircuitOpenError, match="open"):
            lm.chat("ollama:standin", MESSAGES)
        assert len(server.received("/api/chat")) == 3  # failed fast: without touching the server
        assert events[-1].kind == "breaker_rejected"


def test_breaker_half_opens_and_closes_when_the_server_recovers(start_standin):
    server = start_standin(OllamaStandin, reply="back")
    server.faults.status = 500
    with resilient(server, retries=0, breaker_failures=1, breaker_reset=5.0) as lm:
        clock = FakeClock()  # the reset time passes when the test says, not when the machine does
        lm.breaker("ollama:standin").clock = clock
        with pytest.raises(EngineError):
            lm.chat("ollama:standin", MESSAGES)
        with pytest.raises(CircuitOpenError):
            lm.chat("ollama:standin", MESSAGES)
        server.faults.status = None
        clock.now += 4.5
        with pytest.raises(CircuitOpenError):  # still open just before the reset time
            lm.chat("ollama:standin", MESSAGES)
        clock.now += 0.5
        assert lm.chat("ollama:standin", MESSAGES).content == "back"
        assert list(lm.breaker_states().values()) == ["closed"]


def test_fallback_answers_when_the_first_model_fails(start_standin):
    bad = start_standin(OllamaStandin, models=["big"])
    bad.faults.status = 500
    good = start_standin(OpenAIStandin, reply="from the fallback", check_model=False)
    backup = f"openai:small@{good.base_url}"
    events = []
    with Client(Settings(ollama_host=bad.url)) as client:
        rc = ResilientClient(client, policy(retries=1, fallbacks={"ollama:big": [backup]}), listener=events.append)
        result = rc.chat("ollama:big", MESSAGES)
    assert result.content == "from the fallback" and result.model == backup
    assert len(bad.received("/api/chat")) == 2 and len(good.received("/v1/chat/completions")) == 1
    assert [e.kind for e in events] == ["retry", "fallback"]


def test_every_model_failing_names_each_failure(start_standin):
    server = start_standin(OllamaStandin, models=["a", "b"])
    server.faults.status = 503
    with Client(Settings(ollama_host=server.url)) as client:
        rc = ResilientClient(client, policy(retries=0, fallbacks={"ollama:a": ["ollama:b"]}))
        with pytest.raises(EngineBusyError) as info:  # the last failure's kind (503: busy)
            rc.chat("ollama:a", MESSAGES)
    assert "ollama:a" in str(info.value) and "ollama:b" in str(info.value) and "busy" in str(info.value)


def test_a_bad_request_is_not_retried(start_standin):
    server = start_standin(OllamaStandin)
    server.faults.status = 400
    with resilient(server) as lm:
        with pytest.raises(InvalidOptionError):
            lm.chat("ollama:standin", MESSAGES)
    assert len(server.received("/api/chat")) == 1


def test_a_hanging_server_times_out_on_time_and_falls_back(start_standin):
    hung = start_standin(OllamaStandin, models=["slow", "quick"], reply="quick answer")
    hung.faults.hang, hung.faults.times = True, 1
    with Client(Settings(ollama_host=hung.url, request_timeout=60)) as client:
        events = []
        rc = ResilientClient(
            client,
            policy(retries=0, first_token_timeout=0.5, fallbacks={"ollama:slow": ["ollama:quick"]}),
            listener=events.append,
        )
        result = rc.chat("ollama:slow", MESSAGES)
    assert result.content == "quick answer" and result.model == "ollama:quick"
    # The 0.5 s first-token timeout gave up on the hung model (not the 60 s socket timeout, which
    # would be an unavailable-server error without a timeout event), then the fallback answered.
    assert [(e.kind, e.model) for e in events] == [("timeout", "ollama:slow"), ("fallback", "ollama:quick")]
    assert "first_token_timeout of 0.5 s" in events[0].detail


def test_a_server_going_silent_mid_stream_is_a_clean_error_not_a_hang(start_standin):
    server = start_standin(OllamaStandin, num_tokens=50, token_delay=0.01)
    server.faults.hang_after = 3
    with resilient(server, retries=0, first_token_timeout=2, total_timeout=1.0) as lm:
        shown = []
        # the 1 s total_timeout ends it (the socket's 30 s would be another error, and no hang here)
        with pytest.raises(UpstreamTimeoutError, match="stopped mid-answer within the total_timeout of 1 s"):
            for chunk in lm.chat_stream("ollama:standin", MESSAGES):
                shown.append(chunk.content)
    assert len(shown) == 3


def test_a_dropped_stream_is_not_retried_once_text_was_shown(start_standin):
    server = start_standin(OllamaStandin, num_tokens=20)
    server.faults.drop_after, server.faults.times = 4, 1
    with resilient(server) as lm:
        with pytest.raises(EngineUnavailableError, match="4 chunks"):
            list(lm.chat_stream("ollama:standin", MESSAGES))
    assert len(server.received("/api/chat")) == 1  # retrying would repeat the text already shown


def test_a_dropped_answer_is_retried_when_nothing_was_shown(start_standin):
    server = start_standin(OllamaStandin, num_tokens=20)
    server.faults.drop_after, server.faults.times = 4, 1
    with resilient(server) as lm:
        result = lm.chat("ollama:standin", MESSAGES)  # collected whole: safe to retry
    assert result.timings.output_tokens == 20 and len(server.received("/api/chat")) == 2


def test_a_connection_refused_is_retried_then_reported(closed_url):
    with Client(Settings(ollama_host=closed_url)) as client:
        rc = ResilientClient(client, policy(retries=1))
        with pytest.raises(EngineUnavailableError, match=closed_url.split("//")[1]):
            rc.chat("ollama:standin", MESSAGES)


@pytest.mark.integration
def test_embedded_engine_timeout_frees_the_slot():
    with Client(keep_alive=-1) as client:
        rc = ResilientClient(client, policy(retries=0, total_timeout=0.3, first_token_timeout=10))
        with pytest.raises(UpstreamTimeoutError):
            rc.chat(
                "smollm2",
                [{"role": "user", "content": "Write a long essay about the sea."}],
                options={"temperature": 0, "num_predict": 2000},
            )
        # the cancelled request released its slot: the next one is answered normally
        result = client.chat("smollm2", MESSAGES, options={"temperature": 0, "num_predict": 4})
    assert result.done_reason in ("stop", "length") and result.content


def test_connect_timeout_reaches_the_remote_engines_http_clients(start_standin):
    server = start_standin(OpenAIStandin, check_model=False)
    s = Settings(request_timeout=60, resilience=ResilienceSettings(connect_timeout=0.75))
    with Client(s) as client:
        engine = client.engine(client.resolve(f"openai:m@{server.base_url}"))
        assert engine._client.timeout.connect == 0.75 and engine._client.timeout.read == 60
