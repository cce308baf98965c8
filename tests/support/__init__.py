"""What the tests share and are not tests themselves (pytest collects only tests/test_*.py).

    standins.py          stand-in Ollama and OpenAI-compatible servers: real HTTP on 127.0.0.1,
                         deterministic answers, a record of every request, fault knobs
                         (also a script: `python -m support.standins ollama --port N` from tests/)
    standin_fixtures.py  pytest fixtures for them (re-exported by tests/conftest.py)
    gateway_server.py    a real gateway on a free port, in a thread, with stand-in upstreams
    scripted.py          a scripted engine: the Engine protocol with canned answers, no model
    bench_helpers.py     a Client over scripted engines for bench/load tests
    provision.py         finds or installs the programs some tests drive (Redis, Chromium)
    cli.py               the real `lmgauge` command in a subprocess, and the one-line-error check

Tests import them as `from support.standins import OllamaStandin` (pyproject's pytest
`pythonpath = ["tests"]`).
"""
