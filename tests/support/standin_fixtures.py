"""Pytest fixtures for the stand-in servers (standins.py), re-exported by conftest.py.

def test_x(ollama_standin): ...             # a fresh OllamaStandin, default config
def test_y(openai_standin): ...             # a fresh OpenAIStandin (vLLM flavour)
def test_z(start_standin):                  # any number, any config; all stopped after
    a = start_standin(OllamaStandin, token_delay=0.01)
    b = start_standin(OpenAIStandin, flavor="llama-server")
def test_w(closed_url): ...                 # http://127.0.0.1:<port> where nothing listens
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from support.standins import OllamaStandin, OpenAIStandin, StandinServer

S = TypeVar("S", bound=StandinServer)


@pytest.fixture
def start_standin() -> Iterator[Callable[..., Any]]:
    started: list[StandinServer] = []

    def start(cls: type[S], *args: Any, **kwargs: Any) -> S:
        server = cls(*args, **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def ollama_standin(start_standin: Callable[..., Any]) -> OllamaStandin:
    return start_standin(OllamaStandin)


@pytest.fixture
def openai_standin(start_standin: Callable[..., Any]) -> OpenAIStandin:
    return start_standin(OpenAIStandin)


@pytest.fixture
def closed_url() -> str:
    """A local URL nobody listens on (the port was free a moment ago): connection refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
