"""Commands around the gateway: `serve` it, read its request `log`, `monitor` it live."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import load_settings
from ..errors import InvalidOptionError
from .console import err, out
from .options import JsonFlag
from .render import log_table, print_listing

HostFlag = Annotated[
    str | None,
    typer.Option(
        help="Address to listen on (default 127.0.0.1, or OLLAMA_HOST's). 0.0.0.0 exposes the gateway to your network."
    ),
]
InsecureFlag = Annotated[
    bool,
    typer.Option(
        "--allow-insecure",
        help="Listen beyond loopback without an API key (every host that reaches it may use the models).",
    ),
]


def serve(
    host: HostFlag = None,
    port: Annotated[int | None, typer.Option(help="Port (default 11434, Ollama's, or OLLAMA_HOST's).")] = None,
    config: Annotated[Path | None, typer.Option(help="Config file (TOML) instead of ~/.lmgauge/config.toml.")] = None,
    allow_insecure: InsecureFlag = False,
) -> None:
    """Serve the Ollama and OpenAI APIs (plus /metrics and /dashboard) in front of lmgauge's engines.

    Existing Ollama and OpenAI clients work unchanged: point them at http://HOST:PORT (Ollama) or
    http://HOST:PORT/v1 (OpenAI). Ctrl-C stops it after in-flight requests finish.
    """
    from ..gateway.app import serve as run_server
    from ..gateway.env import serve_settings

    if config is not None:
        if not config.expanduser().is_file():
            raise InvalidOptionError(f"--config {config}: no such file")
        os.environ["LMGAUGE_CONFIG"] = str(config.expanduser())
    settings, bind = serve_settings(host, port)
    if allow_insecure:
        settings.gateway.allow_insecure = True

    def ready(b: Any) -> None:
        from ..models import local_models

        served = [m.name for m in local_models(settings)] + [u.model for u in settings.gateway.upstreams]
        served += [f"{alias} (-> {target})" for alias, target in settings.aliases.items()] + ["auto"]
        err.print(
            f"lmgauge gateway on [bold]{b.url}[/] (Ollama API), {b.url}/v1 (OpenAI), "
            f"{b.url}/dashboard, {b.url}/metrics",
            markup=True,
        )
        err.print(f"serving: {', '.join(served)}")

    run_server(settings=settings, bind=bind, on_ready=ready)


StatusFlag = Annotated[
    str | None, typer.Option(help="Only this status: ok, error, timeout, busy, overflow, invalid, cancel, skipped.")
]
SourceFlag = Annotated[str | None, typer.Option(help="Only this source: gateway, cli (run, route ask), chat, bench.")]


def log_cmd(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    status: StatusFlag = None,
    source: SourceFlag = None,
    since: Annotated[str | None, typer.Option(help="Only the last ... (e.g. 30m, 2h).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows, newest first.")] = 50,
    json_out: JsonFlag = False,
) -> None:
    """List logged requests (every gateway and CLI request lands in the store), newest first."""
    import time as _time

    from ..config import parse_duration
    from ..store import LOG_SOURCES, LOG_STATUSES, Store

    if status is not None and status not in LOG_STATUSES:
        raise InvalidOptionError(f"--status must be one of {', '.join(LOG_STATUSES)}, not {status!r}")
    if source is not None and source not in LOG_SOURCES:
        raise InvalidOptionError(f"--source must be one of {', '.join(LOG_SOURCES)}, not {source!r}")
    settings = load_settings()
    cutoff = _time.time() - parse_duration(since) if since else None
    rows = Store(settings.db_path).requests(model=model, status=status, source=source, since=cutoff, limit=limit)
    print_listing(rows, json_out, f"no requests logged in {settings.db_path} match", log_table)


PlotFlag = Annotated[
    Path | None, typer.Option(help="Write latency-over-time and histogram PNGs to this folder and exit.")
]
ApiKeyFlag = Annotated[
    str | None, typer.Option(envvar="LMGAUGE_GATEWAY__API_KEY", help="The gateway's API key, if it has one.")
]


def monitor(
    url: Annotated[str, typer.Argument(help="The gateway's address.")] = "http://127.0.0.1:11434",
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    plot: PlotFlag = None,
    api_key: ApiKeyFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """A live view of a running gateway: per model p50/p95/p99 TTFT, TPOT, E2E, tok/s, errors, queue."""
    from .. import monitor as mon

    if "://" not in url:
        url = "http://" + url
    stats = mon.fetch_stats(url, api_key)
    stats["url"] = url
    if plot is not None:
        plot.mkdir(parents=True, exist_ok=True)
        samples = mon.samples_from_stats(stats)
        paths = [
            mon.plot_latency_over_time(samples, plot / "latency_over_time.png"),
            mon.plot_histogram(samples, plot / "latency_histogram.png"),
        ]
        for p in paths:
            out.print(str(p))
        return
    if json_out:
        stats.pop("samples", None)
        out.print_json(data=stats)
        return
    if once:
        out.print(mon.stats_table(stats))
        return
    _watch(url, api_key, interval, stats)


def _watch(url: str, api_key: str | None, interval: float, stats: dict[str, Any]) -> None:
    """Refresh the table every `interval` seconds until Ctrl-C."""
    import time as _time

    from rich.live import Live

    from .. import monitor as mon

    with Live(mon.stats_table(stats), console=out, refresh_per_second=4) as live:
        try:
            while True:
                _time.sleep(interval)
                stats = mon.fetch_stats(url, api_key)
                stats["url"] = url
                live.update(mon.stats_table(stats))
        except KeyboardInterrupt:
            pass
