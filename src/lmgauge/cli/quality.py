"""`lmgauge quality`: what a quantization costs in accuracy beside what it saves (lmgauge.quality)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..config import load_settings
from .console import err, out
from .options import JsonFlag, ModelArg
from .render import print_quality, progress_bar

if TYPE_CHECKING:
    from ..quality import QualityConfig

VariantsFlag = Annotated[
    str, typer.Option(help="Weight variants to quantize from the reference and measure (llama-quantize's names).")
]
KvTypesFlag = Annotated[
    str, typer.Option("--kv-types", help="KV-cache types measured on the reference's weights (f16 is the baseline).")
]
ReferenceFlag = Annotated[
    str | None, typer.Option(help="The reference GGUF (default: the highest-precision local file of this model).")
]
TextFlag = Annotated[
    str | None, typer.Option(help="A UTF-8 text file to evaluate on (default: the shipped public-domain corpus).")
]
CtxFlag = Annotated[int, typer.Option("--ctx", help="Tokens per chunk; the second half of each is scored.")]
ChunksFlag = Annotated[
    int | None,
    typer.Option(
        help="Chunks to evaluate (default 4; 0 = the whole text). More chunks, smaller ± columns, proportionally longer."
    ),
]
TopKFlag = Annotated[int, typer.Option("--top-k", help="Reference tokens kept per position (+ tail mass).")]
ImatrixFlag = Annotated[
    str | None, typer.Option(help="An importance matrix from llama-imatrix (GGUF) for the quantizer.")
]
BudgetsFlag = Annotated[
    str | None,
    typer.Option(
        help="Memory budgets for the verdicts, e.g. 512MiB,1GiB,2GiB (default: powers of two around the rows)."
    ),
]
BudgetCtxFlag = Annotated[
    int | None, typer.Option("--budget-ctx", help="The window the verdicts size for (default: min(8192, trained)).")
]
RepsFlag = Annotated[
    int, typer.Option(help="Measured repetitions of the speed benchmark per row (medians; `lmgauge bench` uses 5).")
]
WarmupFlag = Annotated[int, typer.Option(help="Unmeasured warmup requests per row.")]
NoSpeedFlag = Annotated[bool, typer.Option("--no-speed", help="Skip the speed and memory benchmark.")]
FreshFlag = Annotated[bool, typer.Option("--fresh", help="Measure every row again instead of reusing stored rows.")]
OutputFlag = Annotated[
    Path | None, typer.Option("--output", "-O", help="A directory (JSON, PNG, HTML) or one .json/.png/.html file.")
]


def quality(
    model: ModelArg,
    variants: VariantsFlag = "Q4_K_M,Q5_K_M,Q8_0",
    kv_types: KvTypesFlag = "f16,q8_0,q4_0",
    reference: ReferenceFlag = None,
    text: TextFlag = None,
    ctx: CtxFlag = 512,
    chunks: ChunksFlag = None,
    top_k: TopKFlag = 64,
    imatrix: ImatrixFlag = None,
    budgets: BudgetsFlag = None,
    budget_ctx: BudgetCtxFlag = None,
    reps: RepsFlag = 3,
    warmup: WarmupFlag = 1,
    no_speed: NoSpeedFlag = False,
    fresh: FreshFlag = False,
    output: OutputFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """What a quantization costs in accuracy beside what it saves: perplexity, KL divergence and top-1
    agreement against the reference, with file size, memory and speed, and a verdict per memory budget.

    Variants are quantized with llama.cpp's quantizer and cached; results are stored per row, so
    running the same command again resumes (see docs/quality.md).
    """
    from ..quality import QualityConfig, write_outputs
    from ..quality.report import parse_budgets
    from ..quality.variants import parse_variants

    config = QualityConfig(
        model=model,
        variants=parse_variants(variants),
        kv_types=list(dict.fromkeys(k.strip() for k in kv_types.split(",") if k.strip())),
        reference=reference,
        text=text,
        ctx=ctx,
        top_k=top_k,
        imatrix=imatrix,
        speed=not no_speed,
        reps=reps,
        warmup=warmup,
        budgets=parse_budgets(budgets) if budgets else None,
        budget_ctx=budget_ctx,
        fresh=fresh,
    )
    if chunks is not None:
        config.chunks = chunks or None
    report = _run_with_progress(config)
    written = write_outputs(report, output) if output else []
    if json_out:
        out.print_json(data=report, default=str)
    else:
        print_quality(report)
    for path in written:
        err.print(f"wrote {path}")


def _run_with_progress(config: QualityConfig) -> dict[str, Any]:
    """Run the evaluation with one progress bar that names the step in progress."""
    from ..quality import run_quality
    from ..store import Store

    settings = load_settings()
    with progress_bar(elapsed=True) as bar:
        task = bar.add_task("quality", total=None)
        return run_quality(
            settings,
            config,
            Store(settings.db_path),
            progress=lambda what, done, total: bar.update(task, description=what, completed=done, total=total or None),
        )
