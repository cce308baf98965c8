"""The gateway under the faults an operator meets, each reproduced with stand-in upstreams on
127.0.0.1: a node that hangs while still answering its health checks, a node that dies
mid-stream, a slow node whose clients hang up, a SIGTERM whose grace period runs out. Each test
shows what the gateway does about it and that what it reports (log rows, counters, health) is
exactly what happened."""

from __future__ import annotations

import json

import httpx
import pytest

from lmgauge.config import GatewaySettings, ResilienceSettings, Settings, UpstreamSettings
from lmgauge.store import Store
from support.gateway_server import GatewayServer, free_port, ollama_stub, openai_stub, wait_for

CHAT = {"model": "stub", "messages": [{"role": "user", "content": "x"}]}


def pool_settings(tmp_path, urls, kind="ollama", cooldown=0.3, **gateway) -> Settings:
    return Settings(
        home=tmp_path,
        resilience=ResilienceSettings(breaker_reset=cooldown),
        gateway=GatewaySettings(upstreams=[UpstreamSettings(model="stub", kind=kind, urls=urls)], **gateway),
    )


def log_rows(srv: GatewayServer, n: int) -> list[dict]:
    srv.wait_logged(n)
    return Store(srv.settings.db_path).requests(source="gateway", limit=1000)


def nodes(srv: GatewayServer) -> dict[str, dict]:
    return {n["url"]: n for n in srv.gateway.gauges()["upstreams"]}


def failovers_counted(metrics: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "lmgauge_upstream_failovers":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["url"]] = sample.value
    return out


# --- 1. a hung node -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_a_hung_node_that_passes_health_checks_fails_over_and_stays_down(tmp_path, kind):
    """One good node, one that accepts chats and never answers but passes its liveness check:
    every request succeeds (the ones sent to the hung node move on after the first-token
    timeout), the hung node is marked down, liveness checks do not bring it back, the test
    generation after its cooldown keeps it down while it hangs and brings it back once it answers."""
    make = ollama_stub if kind == "ollama" else openai_stub
    good, hung = make(), make()
    chat_path = "/api/chat" if kind == "ollama" else "/v1/chat/completions"
    hung.faults.hang, hung.faults.paths = True, [chat_path]
    urls = [good.url, hung.url] if kind == "ollama" else [good.base_url, hung.base_url]
    hung_url = urls[1]
    try:
        settings = pool_settings(tmp_path, urls, kind=kind, first_token_timeout=0.5, health_interval=0.1)
        with GatewayServer(settings) as srv:
            statuses = []
            for i in range(12):
                stream = i % 2 == 0
                path = "/api/chat" if i % 3 else "/v1/chat/completions"
                r = httpx.post(srv.url + path, json={**CHAT, "stream": stream}, timeout=30)
                statuses.append(r.status_code)
                assert '"error"' not in r.text, r.text
            assert statuses == [200] * 12
            rows = log_rows(srv, 12)
            assert [r["status"] for r in rows] == ["ok"] * 12
            assert all(r["upstream"] == urls[0] for r in rows)
            moved = [r for r in rows if r["extra"].get("failed_over")]
            assert moved and all(r["extra"]["failed_over"] == [hung_url] for r in moved)
            assert failovers_counted(httpx.get(srv.url + "/metrics").text) == {hung_url: float(len(moved))}
            assert not nodes(srv)[hung_url]["healthy"]
            assert "within 0.5s" in nodes(srv)[hung_url]["last_error"]  # a request or the test generation said so

            # Its liveness URL answers all along; only a real generation may bring it back.
            probes = lambda: [  # noqa: E731  a short factory, read where it is used
                q
                for q in hung.received(chat_path)
                if (q.body or {}).get("stream") is False
                and ((q.body.get("options") or {}).get("num_predict") == 1 or q.body.get("max_tokens") == 1)
            ]
            assert wait_for(lambda: len(probes()) >= 2)  # probed after a cooldown, twice: still hung
            assert not nodes(srv)[hung_url]["healthy"] and nodes(srv)[hung_url]["times_down"] == 1
            liveness = "/api/version" if kind == "ollama" else "/v1/models"
            assert httpx.get(hung.url + liveness, timeout=5).status_code == 200  # what a liveness check sees

            hung.faults.hang = False  # it recovers
            assert wait_for(lambda: nodes(srv)[hung_url]["healthy"])
            before = len(hung.received(chat_path))
            for _ in range(4):
                assert httpx.post(srv.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30).status_code == 200
            assert len(hung.received(chat_path)) > before  # back in the rotation
    finally:
        good.stop()
        hung.stop()


def test_every_node_hung_is_a_504_within_the_deadline(tmp_path):
    a, b = ollama_stub(), ollama_stub()
    for s in (a, b):
        s.faults.hang, s.faults.paths = True, ["/api/chat"]
    try:
        with GatewayServer(
            pool_settings(tmp_path, [a.url, b.url], first_token_timeout=0.4, health_interval=3600)
        ) as srv:
            r = httpx.post(srv.url + "/api/chat", json={**CHAT, "stream": True}, timeout=30)
            assert r.status_code == 504
            assert "no node sent the first token" in r.json()["error"] and a.url in r.json()["error"]
            row = log_rows(srv, 1)[0]
            assert row["status"] == "timeout" and "failed_over" not in row["extra"]
            assert not any(n["healthy"] for n in nodes(srv).values())
            assert srv.gateway.gauges()["models"]["stub"]["in_flight"] == 0
            # The request's own deadline bounds the tries: with 0.3 s, the second node is never reached.
        with GatewayServer(
            pool_settings(
                tmp_path / "b", [a.url, b.url], first_token_timeout=0.4, request_timeout=0.3, health_interval=3600
            )
        ) as srv:
            seen = len(a.received("/api/chat")) + len(b.received("/api/chat"))
            r = httpx.post(srv.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30)
            assert r.status_code == 504
            assert len(a.received("/api/chat")) + len(b.received("/api/chat")) == seen + 1
    finally:
        a.stop()
        b.stop()


def test_a_node_that_refuses_is_down_for_its_cooldown_then_probed_back(tmp_path):
    """A node marked down is not put back by the next liveness check but by a test generation
    after the cooldown; meanwhile requests go to the node that is up."""
    good, flaky = ollama_stub(), ollama_stub()
    flaky.faults.status, flaky.faults.paths = 500, ["/api/chat"]
    try:
        with GatewayServer(pool_settings(tmp_path, [flaky.url, good.url], cooldown=0.5, health_interval=0.1)) as srv:
            for _ in range(4):
                assert httpx.post(srv.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30).status_code == 200
            assert not nodes(srv)[flaky.url]["healthy"]
            assert len(flaky.received("/api/chat")) >= 1
            flaky.faults.status = None
            assert wait_for(lambda: nodes(srv)[flaky.url]["healthy"])
            probe = flaky.received("/api/chat")[-1].body
            assert probe["stream"] is False and probe["options"]["num_predict"] == 1 and probe["model"] == "stub"
    finally:
        good.stop()
        flaky.stop()


# --- 2. clients that hang up before a non-streamed answer ------------------------------------------


def _hang_up(url: str, path: str, body: dict, after: float = 0.5) -> None:
    """Send a request and close the connection after `after` seconds without an answer."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + path, json=body, timeout=httpx.Timeout(10, read=after))


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_client_hanging_up_cancels_the_upstream_request_and_frees_its_slot(tmp_path, path):
    """A slow node (here: one that has not answered yet) and a client that gives up on a
    non-streamed request: the gateway closes its request to the node, gives back the admission
    slot (the pool's only one) and logs "cancel" - instead of holding both until the node answers."""
    node = ollama_stub()
    node.faults.hang, node.faults.paths = True, ["/api/chat"]
    settings = Settings(
        home=tmp_path,
        gateway=GatewaySettings(
            health_interval=3600,
            max_queue=4,
            upstreams=[UpstreamSettings(model="stub", urls=[node.url], max_concurrency=1)],
        ),
    )
    try:
        with GatewayServer(settings) as srv:
            for _ in range(3):  # fire-and-disconnect, more times than there are slots
                _hang_up(srv.url, path, {**CHAT, "stream": False})
            assert wait_for(lambda: node.active == 0)  # the node saw each of its requests closed
            assert wait_for(lambda: srv.gateway.gauges()["models"]["stub"]["in_flight"] == 0)
            rows = log_rows(srv, 3)
            assert [r["status"] for r in rows] == ["cancel"] * 3 and all(r["error"] is None for r in rows)
            node.faults.hang = False
            r = httpx.post(srv.url + path, json={**CHAT, "stream": False}, timeout=30)
            assert r.status_code == 200  # the slot is free for the next client
            assert nodes(srv)[node.url]["healthy"]  # a client leaving is not the node's failure
    finally:
        node.stop()


def test_a_client_hanging_up_while_queued_leaves_the_queue(tmp_path):
    node = ollama_stub()
    node.faults.hang, node.faults.paths = True, ["/api/chat"]
    settings = Settings(
        home=tmp_path,
        gateway=GatewaySettings(
            health_interval=3600, upstreams=[UpstreamSettings(model="stub", urls=[node.url], max_concurrency=1)]
        ),
    )
    try:
        with GatewayServer(settings) as srv:
            _hang_up(srv.url, "/api/chat", {**CHAT, "stream": False})  # the running one
            _hang_up(srv.url, "/api/chat", {**CHAT, "stream": True})  # waits in the queue, then leaves
            assert wait_for(lambda: srv.gateway.gauges()["models"]["stub"] == {"queued": 0, "in_flight": 0, "limit": 1})
            assert [r["status"] for r in log_rows(srv, 2)] == ["cancel", "cancel"]
    finally:
        node.stop()


@pytest.mark.integration
def test_a_client_hanging_up_frees_the_embedded_engines_slot(tmp_path):
    """The same with the embedded SmolLM2 on a long answer: the engine's job is cancelled."""
    with GatewayServer(Settings(home=tmp_path, parallel=1)) as srv:
        text = "Write the numbers from 1 to 5000, separated by commas."  # greedy: 3000 tokens, no early stop
        long = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": text}],
            "stream": False,
            "options": {"num_predict": 3000, "temperature": 0},
        }
        warm = httpx.post(srv.url + "/api/chat", json={**long, "options": {"num_predict": 1}}, timeout=120)
        assert warm.status_code == 200  # loaded: the next requests reach the engine at once
        _hang_up(srv.url, "/api/chat", long, after=1.5)
        _hang_up(srv.url, "/v1/chat/completions", {**long, "max_tokens": 3000, "temperature": 0}, after=1.5)

        def idle() -> bool:
            engines = {id(b.engine): b.engine for b in srv.gateway._engines.values()}
            runners = [m for e in engines.values() for m in e.loaded()]
            gauges = srv.gateway.gauges()["models"]
            return (
                bool(runners)
                and all(m.details["active"] == 0 for m in runners)
                and len(gauges) == 1
                and all(g["in_flight"] == 0 for g in gauges.values())
            )

        def state() -> str:
            engines = {id(b.engine): b.engine for b in srv.gateway._engines.values()}
            return f"{[m.details for e in engines.values() for m in e.loaded()]} {srv.gateway.gauges()['models']}"

        assert wait_for(idle, timeout=60), state()  # 2 x 3000 tokens take far longer than this on CPU
        rows = log_rows(srv, 3)
        assert [r["status"] for r in rows] == ["cancel", "cancel", "ok"]
        r = httpx.post(srv.url + "/api/chat", json={**long, "options": {"num_predict": 4}}, timeout=60)
        assert r.status_code == 200 and r.json()["eval_count"] <= 4


# --- 3. a shutdown whose grace period runs out ------------------------------------------------------


def test_shutdown_past_its_grace_ends_each_stream_with_an_error_event(tmp_path):
    """SIGTERM with two streams that will not finish within shutdown_grace: each client gets a
    final error event and a complete response (no broken chunked body), the gateway prints one
    line per cut request and no traceback, and the log says what each one delivered."""
    import signal
    import threading

    from test_gateway_faults import _serve

    node = ollama_stub()
    node.faults.hang_after = 3  # three tokens, then silence with the connection open
    port = free_port()
    proc = _serve(tmp_path, node.url, port, extra="shutdown_grace = 1", upstream_extra="max_concurrency = 2")
    started = threading.Barrier(3)
    got: dict[str, list[str]] = {}

    def client(path: str) -> None:
        lines: list[str] = []
        body = {**CHAT, "stream": True}
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{port}{path}", json=body, timeout=30) as r:
                for line in r.iter_lines():
                    if not line.strip():
                        continue
                    lines.append(line)
                    if len(lines) == 3:
                        started.wait()
        except httpx.HTTPError as exc:  # e.g. an incomplete chunked read
            lines.append(f"client error: {exc!r}")
        got[path] = lines

    threads = [threading.Thread(target=client, args=(p,)) for p in ("/api/chat", "/v1/chat/completions")]
    try:
        for t in threads:
            t.start()
        started.wait(timeout=30)
        queued: list[httpx.Response] = []  # a third request waits for one of the two slots
        third = threading.Thread(
            target=lambda: queued.append(
                httpx.post(f"http://127.0.0.1:{port}/api/chat", json={**CHAT, "stream": False}, timeout=30)
            )
        )
        third.start()
        assert wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/api/lmgauge/stats").json()["gauges"]["stub"]["queued"] == 1
        )
        proc.send_signal(signal.SIGTERM)
        for t in [*threads, third]:
            t.join(30)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        node.stop()
    stderr = proc.stderr.read().decode()
    ndjson = [json.loads(line) for line in got["/api/chat"]]
    assert [x["message"]["content"] for x in ndjson[:3]] == ["The", " sky", " is"]
    assert "shutting down" in ndjson[-1]["error"] and len(ndjson) == 4
    events = [line[6:] for line in got["/v1/chat/completions"] if line.startswith("data: ")]
    assert "shutting down" in json.loads(events[-1])["error"]["message"] and "[DONE]" not in events
    assert "Traceback" not in stderr and "Cancel" not in stderr, stderr
    assert queued[0].status_code == 503 and "shutting down" in queued[0].json()["error"]
    cut_lines = [line for line in stderr.splitlines() if line.startswith("shutdown:")]
    assert len(cut_lines) == 3, stderr
    assert sum("after 3 chunks sent" in line for line in cut_lines) == 2
    rows = Store(tmp_path / "lmgauge.db").requests(source="gateway")
    assert sorted(r["output_tokens"] for r in rows) == [0, 3, 3] and all(r["status"] == "error" for r in rows)
    assert all("shutting down" in r["error"] for r in rows)


# --- 4. what is logged and counted ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_stream_cut_after_ten_chunks_is_logged_with_ten_output_tokens(tmp_path, path):
    node = ollama_stub(num_tokens=30)
    node.faults.drop_after = 10  # the node dies mid-stream
    try:
        with GatewayServer(pool_settings(tmp_path, [node.url], health_interval=3600)) as srv:
            r = httpx.post(srv.url + path, json={**CHAT, "stream": True}, timeout=30)
            assert r.status_code == 200 and "mid-stream" in r.text
            row = log_rows(srv, 1)[0]
            assert row["status"] == "error" and row["output_tokens"] == 10
            assert row["ttft_ms"] is not None and row["upstream"] == node.url
    finally:
        node.stop()


def test_a_failure_with_no_other_node_is_not_a_failover(tmp_path):
    node = ollama_stub()
    node.faults.status, node.faults.paths = 500, ["/api/chat"]
    try:
        with GatewayServer(pool_settings(tmp_path, [node.url], health_interval=3600)) as srv:
            r = httpx.post(srv.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30)
            assert r.status_code == 502
            row = log_rows(srv, 1)[0]
            assert row["status"] == "error" and "failed_over" not in row["extra"]
            assert failovers_counted(httpx.get(srv.url + "/metrics").text) == {}
    finally:
        node.stop()


def test_a_failure_on_every_node_counts_no_failover(tmp_path):
    a, b = ollama_stub(), ollama_stub()
    for s in (a, b):
        s.faults.status, s.faults.paths = 500, ["/api/chat"]
    try:
        with GatewayServer(pool_settings(tmp_path, [a.url, b.url], health_interval=3600)) as srv:
            assert httpx.post(srv.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30).status_code == 502
            assert "failed_over" not in log_rows(srv, 1)[0]["extra"]
            assert failovers_counted(httpx.get(srv.url + "/metrics").text) == {}
    finally:
        a.stop()
        b.stop()


# --- 6. timeout messages ------------------------------------------------------------------------------


def test_timeout_messages_say_what_did_not_happen(tmp_path):
    """Through a library engine (`ollama:NAME`), where the gateway itself times the first token
    and the whole answer."""
    node = ollama_stub(num_tokens=20, token_delay=0.3)
    try:
        settings = Settings(
            home=tmp_path,
            ollama_host=node.url,
            aliases={"remote": "ollama:stub"},
            # the first token is sent at once and the whole answer takes 5.7 s: bounds that a busy
            # machine still meets for the first token, and the answer still overruns
            gateway=GatewaySettings(first_token_timeout=1.5, request_timeout=2.5),
        )
        with GatewayServer(settings) as srv:
            node.faults.hang, node.faults.paths, node.faults.times = True, ["/api/chat"], 1
            r = httpx.post(srv.url + "/api/chat", json={**CHAT, "model": "remote", "stream": False}, timeout=30)
            assert r.status_code == 504
            assert r.json()["error"] == (
                "remote: the first token did not come within 1.5s (gateway.first_token_timeout)"
            )
            r = httpx.post(srv.url + "/api/chat", json={**CHAT, "model": "remote", "stream": True}, timeout=30)
            last = json.loads(r.text.splitlines()[-1])
            assert last["error"] == "remote: the answer did not finish within 2.5s (gateway.request_timeout)"
    finally:
        node.stop()


# --- 5. /api/ps ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_ps_lists_each_loaded_file_once_under_the_name_used_last(tmp_path):
    """Three model files loaded in the embedded engine: three rows (each backend used to list the
    shared engine's whole list: nine), each named as a client last asked for it."""
    from lmgauge.client import Client

    smol = Client(Settings(home=tmp_path)).resolve("smollm2").target
    models = tmp_path / "models"
    models.mkdir()
    for copy in ("alpha", "beta"):  # the same weights under other file names: other files to load
        (models / f"{copy}.gguf").symlink_to(smol)
    settings = Settings(home=tmp_path, model_dirs=[models], keep_alive=-1, aliases={"tiny": "smollm2"})
    with GatewayServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=120) as http:
        short = {"messages": [{"role": "user", "content": "Hi"}], "stream": False, "options": {"num_predict": 1}}
        for name in ("smollm2", "alpha", "beta"):
            assert http.post("/api/chat", json={"model": name, **short}).status_code == 200
        rows = http.get("/api/ps").json()["models"]
        assert sorted(r["name"] for r in rows) == ["alpha", "beta", "smollm2"]
        assert all(r["size"] > 50_000_000 and r["context_length"] == 4096 for r in rows)
        assert http.post("/api/chat", json={"model": "tiny", **short}).status_code == 200  # same file, new name
        rows = http.get("/api/ps").json()["models"]
        assert sorted(r["name"] for r in rows) == ["alpha", "beta", "tiny"]
        assert (
            http.post(
                "/api/chat", json={"model": "beta", **short, "options": {"num_predict": 1, "num_ctx": 2048}}
            ).status_code
            == 200
        )  # reloaded with another window: still one row, the real one
        beta = [r for r in http.get("/api/ps").json()["models"] if r["name"] == "beta"]
        assert len(beta) == 1 and beta[0]["context_length"] == 2048


def test_node_health_cools_down_before_a_probe_and_restarts_the_cooldown_on_failure():
    from lmgauge.gateway.health import NodeHealth

    now = [100.0]
    health = NodeHealth(cooldown_s=5.0, clock=lambda: now[0])
    assert health.up and not health.probe_due()
    assert health.failed("no first token within 2s") is True
    assert not health.up and health.cooling_for() == 5.0 and not health.probe_due()
    now[0] += 3
    assert health.failed("another request timed out") is False  # still down: the cooldown restarts
    now[0] += 4
    assert not health.probe_due() and health.cooling_for() == 1.0
    now[0] += 1
    assert health.probe_due()
    assert health.succeeded() is True and health.up and health.last_error is None and health.times_down == 1
    assert health.succeeded() is False


def test_a_node_that_refuses_the_test_chat_with_a_4xx_is_alive(tmp_path):
    """An embedding model's nodes answer a chat with 400: the node answered, so it is back."""
    node = ollama_stub()
    node.faults.status, node.faults.paths, node.faults.times = 500, ["/api/embed"], 1
    try:
        with GatewayServer(pool_settings(tmp_path, [node.url], cooldown=0.2, health_interval=0.1)) as srv:
            # the node's cooldown runs on a clock the test moves: no probe (which would pass before
            # the 400 is set up) can bring it back while the machine is slow to get to the asserts
            now = [100.0]
            srv.gateway.upstreams["stub"].nodes[0].health.clock = lambda: now[0]
            assert (
                httpx.post(srv.url + "/api/embed", json={"model": "stub", "input": "x"}, timeout=30).status_code == 502
            )
            assert not nodes(srv)[node.url]["healthy"]
            node.faults.status, node.faults.paths, node.faults.times = 400, ["/api/chat"], None
            now[0] += 0.2  # the cooldown is over: the next health check probes with a test chat
            assert wait_for(lambda: nodes(srv)[node.url]["healthy"])
            assert (
                httpx.post(srv.url + "/api/embed", json={"model": "stub", "input": "x"}, timeout=30).status_code == 200
            )
    finally:
        node.stop()
