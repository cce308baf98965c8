"""The same faults against both remote engines, through the stand-in servers: a server that is
down, HTTP errors, a hang before answering, silence mid-stream, a dropped connection, an error
inside the stream. Each test runs once per engine; what differs between Ollama and an
OpenAI-compatible server (URLs, messages, which call is "plain") is in one table, REMOTES.

No test here measures time: a timeout is checked by the error that names it (`did not answer
within 1 s`, `went silent mid-stream`), which only the engine's own request_timeout produces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lmgauge.engines.base import collect
from lmgauge.engines.ollama import OllamaEngine
from lmgauge.engines.openai import OpenAIEngine
from lmgauge.errors import EngineBusyError, EngineError, EngineUnavailableError, InvalidOptionError
from lmgauge.types import ChatRequest, Message
from support.standins import DEFAULT_REPLY, OllamaStandin, OpenAIStandin, StandinServer, split_tokens

HANG_TIMEOUT = 1.0
N_REPLY = len(split_tokens(DEFAULT_REPLY))  # 9


@dataclass(frozen=True)
class Remote:
    """One remote engine as these tests drive it."""

    standin: type[StandinServer]
    model: str
    make: Callable[..., Any]  # (settings, url, **engine options) -> engine
    url: Callable[[Any], str]  # the address the engine is given (and names in its errors)
    path: str  # what follows host:port in that address
    down: str  # the one-line error when nothing listens at {url}
    calls: dict[str, Callable[[Any, str], Any]]  # every call that must report a server that is down
    plain: str  # the call that is not a chat, for a hang on a plain request
    statuses: tuple[tuple[int, type[Exception]], ...]  # HTTP error -> the exception a user catches
    drop_points: tuple[int, ...]  # tokens streamed before the connection drops
    stream_error: tuple[int, str]  # (tokens before the error, the server's message)


def _chat(model: str) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", "why is the sky blue?")])


REMOTES = {
    "ollama": Remote(
        standin=OllamaStandin,
        model="standin",
        make=lambda settings, url, **kw: OllamaEngine(settings, host=url, **kw),
        url=lambda server: server.url,
        path="",
        down="cannot reach Ollama at {url}: is `ollama serve` running?",
        calls={
            "chat": lambda e, m: collect(e.chat(_chat(m))),
            "list_models": lambda e, m: e.list_models(),
            "embed": lambda e, m: e.embed(m, ["x"]),
            "loaded": lambda e, m: e.loaded(),
        },
        plain="list_models",
        statuses=((500, EngineError), (400, InvalidOptionError), (429, EngineBusyError), (503, EngineBusyError)),
        drop_points=(0, 4, N_REPLY),
        stream_error=(2, "an error was encountered while running the model"),
    ),
    "openai": Remote(
        standin=OpenAIStandin,
        model="standin-model",
        make=lambda settings, url, **kw: OpenAIEngine(settings, base_url=url, **kw),
        url=lambda server: server.base_url,
        path="/v1",
        down="cannot reach the OpenAI-compatible server at {url}: is it running?",
        calls={
            "chat": lambda e, m: collect(e.chat(_chat(m))),
            "list_models": lambda e, m: e.list_models(),
            "embed": lambda e, m: e.embed(m, ["x"]),
        },
        plain="embed",
        statuses=(
            (500, EngineError),
            (400, InvalidOptionError),
            (422, InvalidOptionError),
            (429, EngineBusyError),
            (503, EngineBusyError),
        ),
        drop_points=(0, 5, N_REPLY),
        stream_error=(3, "CUDA out of memory"),
    ),
}


def each(field: str) -> list[Any]:
    """Parameters (kind, value) for every value of a REMOTES field, named `kind-value`."""
    return [
        pytest.param(kind, value, id=f"{kind}-{value[0] if isinstance(value, tuple) else value}")
        for kind, remote in REMOTES.items()
        for value in getattr(remote, field)
    ]


@pytest.fixture(params=list(REMOTES))
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@dataclass
class Rig:
    remote: Remote
    server: Any
    url: str
    make_settings: Callable[..., Any]
    engines: list[Any]

    def engine(self, request_timeout: float = 10.0, **options: Any) -> Any:
        engine = self.remote.make(self.make_settings(request_timeout=request_timeout), self.url, **options)
        self.engines.append(engine)
        return engine

    def chat(self) -> ChatRequest:
        return _chat(self.remote.model)


@pytest.fixture
def rig(kind: str, start_standin, make_settings) -> Iterator[Rig]:
    """A fresh stand-in for `kind` (a fixture parameter, or the test's own parametrization)."""
    remote = REMOTES[kind]
    server = start_standin(remote.standin)
    rig = Rig(remote, server, remote.url(server), make_settings, [])
    yield rig
    for engine in rig.engines:
        engine.close()


def test_server_down(kind, make_settings, closed_url):
    remote = REMOTES[kind]
    url = closed_url + remote.path
    engine = remote.make(make_settings(), url)
    try:
        for name, call in remote.calls.items():
            with pytest.raises(EngineUnavailableError) as err:
                call(engine, remote.model)
            assert str(err.value) == remote.down.format(url=url), name
    finally:
        engine.close()


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("kind", "status"), each("statuses"))
def test_http_errors(rig, status, stream):
    code, error = status
    rig.server.faults.status = code
    rig.server.faults.message = "something specific went wrong"
    with pytest.raises(error, match="something specific went wrong") as err:
        collect(rig.engine(stream=stream).chat(rig.chat()))
    assert rig.url in str(err.value)
    assert not isinstance(err.value, EngineUnavailableError)


def test_fault_for_one_request_then_healthy(rig):
    rig.server.faults.status, rig.server.faults.times = 500, 1
    engine = rig.engine()
    with pytest.raises(EngineError):
        collect(engine.chat(rig.chat()))
    assert collect(engine.chat(rig.chat())).content == DEFAULT_REPLY


def test_hang_before_answering_times_out(rig):
    rig.server.faults.hang = True
    with pytest.raises(EngineUnavailableError, match="did not answer within 1 s") as err:
        collect(rig.engine(request_timeout=HANG_TIMEOUT).chat(rig.chat()))
    assert rig.url in str(err.value)


def test_hang_on_a_plain_request_times_out(rig):
    """Not a chat: listing models (Ollama), an embedding (OpenAI) also give up at request_timeout."""
    rig.server.faults.hang = True
    plain = rig.remote.calls[rig.remote.plain]
    with pytest.raises(EngineUnavailableError, match="did not answer within 1 s"):
        plain(rig.engine(request_timeout=HANG_TIMEOUT), rig.remote.model)


def test_silence_mid_stream_times_out(rig):
    rig.server.faults.hang_after = 3
    received: list[str] = []
    with pytest.raises(EngineUnavailableError, match="went silent mid-stream"):
        for chunk in rig.engine(request_timeout=HANG_TIMEOUT).chat(rig.chat()):
            received.append(chunk.content)
    assert "".join(received) == "The quick brown"


@pytest.mark.parametrize(("kind", "after"), each("drop_points"))
def test_connection_dropped_mid_stream(rig, after):
    """Dropped after `after` tokens; N_REPLY: after the text, before the final stats."""
    rig.server.faults.drop_after = after
    with pytest.raises(EngineUnavailableError, match="broke mid-stream|closed the connection") as err:
        collect(rig.engine().chat(rig.chat()))
    assert rig.url in str(err.value)


def test_connection_dropped_non_streaming(rig):
    rig.server.faults.drop_after = 2
    with pytest.raises(EngineUnavailableError):
        collect(rig.engine(stream=False).chat(rig.chat()))


def test_error_inside_the_stream(rig):
    rig.server.faults.error_after, rig.server.faults.message = rig.remote.stream_error
    with pytest.raises(EngineError, match=rig.remote.stream_error[1]):
        collect(rig.engine().chat(rig.chat()))
