"""Faults, with real local servers: nodes that refuse, fail, hang or drop mid-stream; a gateway
killed with SIGKILL while it writes its log; a gateway stopped while a stream is in flight."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from lmgauge.config import GatewaySettings, Settings, UpstreamSettings
from lmgauge.store import Store
from support.gateway_server import GatewayServer, free_port, ollama_stub

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "stub", "messages": [{"role": "user", "content": "x"}]}


@pytest.fixture
def stub():
    s = ollama_stub()
    yield s
    s.stop()


def settings_for(tmp_path, urls, **gateway) -> Settings:
    return Settings(
        home=tmp_path, gateway=GatewaySettings(upstreams=[UpstreamSettings(model="stub", urls=urls)], **gateway)
    )


def log_rows(srv: GatewayServer, n: int) -> list[dict]:
    srv.wait_logged(n)
    return Store(srv.settings.db_path).requests(source="gateway", limit=n)


def test_failover_before_the_first_token(tmp_path, stub):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    failing = ollama_stub()
    failing.faults.status, failing.faults.paths = 500, ["/api/chat"]  # healthy to health checks
    try:
        with GatewayServer(settings_for(tmp_path, [dead, failing.url, stub.url], health_interval=3600)) as srv:
            for stream in (False, True):
                r = httpx.post(srv.url + "/api/chat", json={**CHAT, "stream": stream}, timeout=30)
                assert r.status_code == 200
                lines = [json.loads(line) for line in r.text.splitlines()]
                assert lines[-1]["done"] is True and "error" not in lines[-1]
            rows = log_rows(srv, 2)
            assert all(r["status"] == "ok" and r["upstream"] == stub.url for r in rows)
            # The first health check already found the dead node, so only the failing one was tried first.
            assert rows[-1]["extra"]["failed_over"] == [failing.url]
            nodes = {n["url"]: n for n in srv.gateway.gauges()["upstreams"]}
            assert not nodes[dead]["healthy"] and not nodes[failing.url]["healthy"] and nodes[stub.url]["healthy"]
            metrics = httpx.get(srv.url + "/metrics").text
            assert f'lmgauge_upstream_healthy{{model="stub",url="{dead}"}} 0.0' in metrics
            assert "lmgauge_upstream_failovers_total" in metrics
    finally:
        failing.stop()


def test_every_node_down_is_a_clean_502(tmp_path):
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with GatewayServer(settings_for(tmp_path, dead, health_interval=3600)) as srv:
        r = httpx.post(srv.url + "/api/chat", json=CHAT, timeout=30)
        assert r.status_code == 502 and "every upstream for stub failed" in r.json()["error"]
        r = httpx.post(srv.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert r.status_code == 502 and r.json()["error"]["message"]


def test_health_checks_bring_a_node_back(tmp_path, stub):
    with GatewayServer(settings_for(tmp_path, [stub.url], health_interval=0.2)) as srv:
        stub.faults.status = 500
        assert httpx.post(srv.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30).status_code == 502
        stub.faults.status = None
        deadline = time.time() + 10
        while not srv.gateway.gauges()["upstreams"][0]["healthy"] and time.time() < deadline:
            time.sleep(0.1)
        assert srv.gateway.gauges()["upstreams"][0]["healthy"]


def test_upstream_killed_mid_stream_gives_a_clean_error_event(tmp_path, stub):
    stub.faults.drop_after = 3
    with GatewayServer(settings_for(tmp_path, [stub.url])) as srv:
        r = httpx.post(srv.url + "/api/chat", json=CHAT, timeout=30)
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert r.status_code == 200 and [x["message"]["content"] for x in lines[:3]] == ["The", " sky", " is"]
        assert "mid-stream" in lines[-1]["error"] and len(lines) == 4
        r = httpx.post(srv.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30)
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[-1])["error"]["message"] and "[DONE]" not in events
        rows = log_rows(srv, 2)
        assert [r["status"] for r in rows] == ["error", "error"]
        assert all("mid-stream" in r["error"] and r["upstream"] == stub.url for r in rows)


def test_upstream_that_hangs_times_out(tmp_path, stub):
    stub.faults.hang = True
    with GatewayServer(settings_for(tmp_path, [stub.url], first_token_timeout=0.5)) as srv:
        # 30 s is a hang guard: the gateway's 0.5 s first-token timeout answers (a 504 that names
        # it) long before; the client's own timeout would raise here instead.
        r = httpx.post(srv.url + "/api/chat", json={**CHAT, "stream": True}, timeout=30)
        assert r.status_code == 504 and "within 0.5s" in r.json()["error"]
        assert log_rows(srv, 1)[0]["status"] == "timeout"
        assert srv.gateway.gauges()["models"]["stub"]["in_flight"] == 0  # the slot came back


def test_slow_stream_after_first_token_is_cut_by_the_total_timeout(tmp_path, stub):
    stub.token_delay = 0.4
    with GatewayServer(settings_for(tmp_path, [stub.url], request_timeout=1.0)) as srv:
        r = httpx.post(srv.url + "/api/chat", json=CHAT, timeout=30)
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert lines[0]["message"]["content"] == "The" and "within 1s" in lines[-1]["error"]


def _serve(
    tmp_path: Path, stub_url: str, port: int, extra: str = "", ollama_host: bool = False, upstream_extra: str = ""
) -> subprocess.Popen:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[gateway]\n{extra}\n[[gateway.upstreams]]\nmodel = "stub"\nurls = ["{stub_url}"]\n{upstream_extra}\n'
    )
    env = {**os.environ, "LMGAUGE_HOME": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("OLLAMA_HOST", None)
    args = [sys.executable, "-m", "lmgauge", "serve", "--config", str(config)]
    if ollama_host:  # as an Ollama user would: the address in OLLAMA_HOST, no flags
        env["OLLAMA_HOST"] = f"127.0.0.1:{port}"
    else:
        args += ["--port", str(port)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(proc.stderr.read().decode()[-2000:])


def test_sigkill_while_logging_keeps_every_committed_row(tmp_path, stub):
    port = free_port()
    proc = _serve(tmp_path, stub.url, port)
    db = tmp_path / "lmgauge.db"
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                try:
                    c.post(f"http://127.0.0.1:{port}/api/chat", json={**CHAT, "stream": False})
                except httpx.HTTPError:
                    pass

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        seen: list[tuple] = []
        deadline = time.time() + 60
        while time.time() < deadline:  # read committed rows from outside while the gateway writes
            time.sleep(0.2)
            if db.exists():
                with sqlite3.connect(db) as c:
                    seen = c.execute(
                        "SELECT id, ts, model, status, output_tokens FROM request_log ORDER BY id"
                    ).fetchall()
                if len(seen) >= 300:
                    break
        assert len(seen) >= 300
        time.sleep(0.07)  # land the kill inside the writer's next batch
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join()
        if proc.poll() is None:
            proc.kill()
    store = Store(db)  # opens (and recovers the WAL) cleanly
    with store.connect() as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        after = c.execute("SELECT id, ts, model, status, output_tokens FROM request_log ORDER BY id").fetchall()
    after = [tuple(r) for r in after]
    assert after[: len(seen)] == seen and len(after) >= len(seen)
    assert all(r[3] == "ok" for r in after)


def test_graceful_shutdown_finishes_the_stream_in_flight(tmp_path, stub):
    stub.token_delay = 0.25
    port = free_port()
    proc = _serve(tmp_path, stub.url, port)
    try:
        lines: list[dict] = []
        with httpx.stream("POST", f"http://127.0.0.1:{port}/api/chat", json=CHAT, timeout=30) as r:
            for line in r.iter_lines():
                lines.append(json.loads(line))
                if len(lines) == 1:
                    proc.send_signal(signal.SIGTERM)  # stop while the answer is still coming
        assert lines[-1]["done"] is True and len(lines) == 9
        # uvicorn re-raises the signal it caught once shutdown is complete: -SIGTERM is a clean stop.
        assert proc.wait(30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = Store(tmp_path / "lmgauge.db").requests(source="gateway")
    assert rows and rows[0]["status"] == "ok"  # the log was flushed on the way out


def test_serve_listens_where_ollama_host_says(tmp_path, stub):
    port = free_port()
    proc = _serve(tmp_path, stub.url, port, ollama_host=True)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/api/chat", json={**CHAT, "stream": False}, timeout=30)
        assert r.status_code == 200 and r.json()["done"] is True
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert b"Traceback" not in proc.stderr.read()


def test_busy_port_is_a_one_line_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "LMGAUGE_HOME": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run(
            [sys.executable, "-m", "lmgauge", "serve", "--port", str(taken.getsockname()[1])],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1 and "cannot listen on" in out.stderr and "Traceback" not in out.stderr
