"""The dashboard in a real headless browser (the `chromium` fixture: Debian's chromium or the one
support/provision.py installs; driven by Playwright): after real requests through the gateway, every
chart has drawn data points and the table shows the model."""

from __future__ import annotations

import os
import shutil
import threading
import time

import httpx

from lmgauge.config import GatewaySettings, Settings, UpstreamSettings
from support.gateway_server import GatewayServer, ollama_stub

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def drive_traffic(url: str, seconds: float, model: str, pause: float) -> None:
    """Requests for a while, so the charts have several time buckets (several threads run this,
    so the slow model's queue fills)."""
    deadline = time.time() + seconds
    with httpx.Client(base_url=url, timeout=30) as c:
        i = 0
        while time.time() < deadline:
            c.post(
                "/api/chat",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": "word " * (i % 40)}],
                    "stream": i % 2 == 0,
                },
            )
            i += 1
            time.sleep(pause)


def test_dashboard_charts_render_live_data(tmp_path, chromium):
    from playwright.sync_api import sync_playwright

    fast, slow = ollama_stub(), ollama_stub(token_delay=0.03)
    settings = Settings(
        home=tmp_path,
        gateway=GatewaySettings(
            upstreams=[
                UpstreamSettings(model="stub", urls=[fast.url], num_ctx=256, tokenizer="smollm2"),
                UpstreamSettings(model="slow", target="stub", urls=[slow.url], max_concurrency=2),
            ]
        ),
    )
    try:
        with GatewayServer(settings) as srv:
            traffic = [threading.Thread(target=drive_traffic, args=(srv.url, 6.0, "stub", 0.02))]
            traffic += [threading.Thread(target=drive_traffic, args=(srv.url, 6.0, "slow", 0.0)) for _ in range(5)]
            for t in traffic:
                t.start()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(srv.url + "/dashboard")
                for t in traffic:
                    t.join()
                page.wait_for_function("document.body.dataset.ready === '1'", timeout=20_000)
                time.sleep(1.5)  # one more refresh after the traffic ended
                points = {
                    cid: int(page.get_attribute(f"#{cid}", "data-points") or 0)
                    for cid in ("latency", "toks", "queue", "context")
                }
                assert all(n > 0 for n in points.values()), points
                # Data points are drawn pixels, not just an attribute: count non-white pixels.
                inked = page.evaluate("""() => [...document.querySelectorAll('canvas')].map(c => {
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })""")
                assert all(n > 500 for n in inked), inked
                rows = page.locator("#models tbody tr").all_inner_texts()
                assert any(r.startswith("stub") for r in rows) and any(r.startswith("slow") for r in rows)
                assert "up" in page.inner_text("#status")
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
                if os.environ.get("GATEWAY_DASHBOARD_SCREENSHOT"):
                    shutil.copy(tmp_path / "dashboard.png", os.environ["GATEWAY_DASHBOARD_SCREENSHOT"])
                browser.close()
    finally:
        fast.stop()
        slow.stop()
