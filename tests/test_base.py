import pytest

from lmgauge.engines.base import Engine, collect, with_client_clock
from lmgauge.errors import EngineError, UnknownModelError
from lmgauge.types import ChatRequest, Message, Options
from support.scripted import ScriptedEngine


def chat(engine, **opts):
    return engine.chat(ChatRequest(model="scripted", messages=[Message("user", "hi there")], options=Options(**opts)))


def test_scripted_engine_meets_the_protocol():
    assert isinstance(ScriptedEngine(), Engine)


def test_client_clock_is_stamped_on_every_content_chunk():
    result = collect(with_client_clock(chat(ScriptedEngine("a b c d", token_delay_s=0.001))))
    t = result.timings
    assert result.content == "a b c d"
    assert len(t.chunk_ns) == 4 and t.first_token_ns == t.chunk_ns[0]
    assert t.sent_ns <= t.first_token_ns <= t.chunk_ns[-1] <= t.end_ns
    assert len(t.itl_ms) == 3
    assert sum(t.itl_ms) == pytest.approx((t.chunk_ns[-1] - t.chunk_ns[0]) / 1e6)
    assert t.tpot_ms == pytest.approx((t.e2e_ms - t.ttft_ms) / 3)


def test_errors_propagate_from_inside_the_stream():
    with pytest.raises(EngineError, match="scripted failure"):
        collect(with_client_clock(chat(ScriptedEngine("a b c", fail_after=1))))
    with pytest.raises(UnknownModelError):
        collect(ScriptedEngine(models=("other",)).chat(ChatRequest(model="scripted", messages=[Message("user", "x")])))


def test_closing_the_stream_early_closes_the_engine_stream():
    closed = []

    def engine_stream():
        try:
            yield from chat(ScriptedEngine("a b c d e"))
        finally:
            closed.append(True)

    stream = with_client_clock(engine_stream())
    next(stream)
    stream.close()
    assert closed == [True]
