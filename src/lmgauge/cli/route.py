"""Routing commands (model name `auto`): `route explain|ask|calibrate` and `eval routing`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..client import Client
from ..config import Settings, load_settings
from ..display import print_rows
from ..errors import InvalidOptionError
from ..types import Message
from .console import err, out
from .options import (
    JsonFlag,
    OptionFlag,
    SchemaFlag,
    SystemFlag,
    parse_format,
    parse_options,
)
from .records import client_store, log_result, result_json
from .render import (
    decision_rows,
    print_attempts,
    print_calibration,
    print_routing_eval,
    progress_bar,
)

TierFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--tier",
        help="A routing tier as NAME=MODEL, cheapest first, repeatable (e.g. --tier small=smollm2 "
        "--tier large=qwen.gguf). Default: [routing] tiers in the config.",
    ),
]
ClassifierFlag = Annotated[str | None, typer.Option("--classifier", help="features (fast, default) or llm.")]


def settings_with_tiers(tiers: list[str] | None, **routing: Any) -> Settings:
    from ..routing import parse_tiers

    settings = load_settings()
    update = {k: v for k, v in routing.items() if v is not None}
    if tiers:
        update["tiers"] = parse_tiers(tiers)
    if update:
        settings = settings.model_copy(update={"routing": settings.routing.model_copy(update=update)})
    return settings


def route_explain(
    prompt: Annotated[str, typer.Argument(help="The request to classify.")],
    tier: TierFlag = None,
    classifier: ClassifierFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """Show which tier a request would go to, and why (no model answers it)."""
    from ..routing import Router

    settings = settings_with_tiers(tier)
    with Client(settings) as client:
        decision = Router.from_settings(client, settings, classifier=classifier).route(
            [{"role": "user", "content": prompt}]
        )
    if json_out:
        out.print_json(data=decision.to_dict())
    else:
        print_rows(out, decision_rows(decision))


NoEscalateFlag = Annotated[
    bool, typer.Option("--no-escalate", help="Keep the first tier's answer even when it fails a check.")
]


def route_ask(
    prompt: Annotated[str, typer.Argument(help="The request; '-' reads it from stdin.")],
    tier: TierFlag = None,
    classifier: ClassifierFlag = None,
    system: SystemFlag = None,
    format: SchemaFlag = None,
    option: OptionFlag = None,
    no_escalate: NoEscalateFlag = False,
    json_out: JsonFlag = False,
) -> None:
    """Answer through the router: the chosen tier answers; a failed answer escalates to the next."""
    import sys

    from ..resilience import ResilientClient
    from ..routing import Router

    if prompt == "-":
        prompt = sys.stdin.read()
    settings = settings_with_tiers(tier, escalate=False if no_escalate else None)
    messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    with Client(settings) as client:
        router = Router.from_settings(
            ResilientClient(client), settings, classifier=classifier, store=client_store(client)
        )
        answer = router.answer(messages, options=parse_options(option), format=parse_format(format))
        log_result(client, answer.result, "cli")
    if json_out:
        out.print_json(
            data={
                **result_json(answer.result),
                "decision": answer.decision.to_dict(),
                "attempts": [a.__dict__ for a in answer.attempts],
            }
        )
        return
    out.print(answer.result.content)
    print_attempts(answer.attempts, auto=False)


TasksFlag = Annotated[int, typer.Option(min=10, help="Checkable prompts to run on every tier.")]
KeepFlag = Annotated[
    float,
    typer.Option(
        min=0.5, max=1.0, help="Share of the largest tier's correct answers the reported operating point must keep."
    ),
]
SaveFlag = Annotated[bool, typer.Option(help="Save the fitted router (used by `auto` for these tiers).")]
OutcomesFlag = Annotated[
    Path | None,
    typer.Option(help="Where to write every answer and verdict (JSONL); default <home>/calibration-outcomes.jsonl."),
]
ReuseFlag = Annotated[
    Path | None, typer.Option(help="Refit from an earlier run's outcomes file instead of running the models again.")
]


def route_calibrate(
    tier: TierFlag = None,
    tasks: TasksFlag = 125,
    seed: Annotated[int, typer.Option(help="Seed of the prompt generator.")] = 0,
    keep: KeepFlag = 0.95,
    save: SaveFlag = True,
    outcomes: OutcomesFlag = None,
    reuse: ReuseFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """Run checkable prompts (arithmetic, unit conversions, JSON extraction, table facts, code) on
    every tier, fit the router on which tier answered correctly, and print the quality-vs-cost curve."""
    from ..routing import (
        calibrated_path,
        router_embedder,
        save_calibrated,
        tiers_from_settings,
    )
    from ..routing.calibration import calibrate, make_tasks

    settings = settings_with_tiers(tier)
    tier_list = tiers_from_settings(settings)
    task_list = make_tasks(tasks, seed)
    previous = _previous_outcomes(reuse)
    with Client(settings) as client:
        embedder = router_embedder(settings.routing.embedder, client)
        with progress_bar(disable=previous is not None) as bar:
            job = bar.add_task("calibrating", total=len(task_list) * len(tier_list))
            report, classifier, results = calibrate(
                client,
                tier_list,
                embedder,
                task_list,
                keep=keep,
                outcomes=previous,
                progress=lambda name: bar.update(job, advance=1, description=f"tier {name}"),
            )
    path = outcomes or settings.home / "calibration-outcomes.jsonl"
    if previous is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(o.__dict__) + "\n" for o in results))
    if save:
        save_calibrated(calibrated_path(settings), tier_list, classifier, report.to_dict())
    if json_out:
        out.print_json(data=report.to_dict())
        return
    print_calibration(report)
    if previous is None:
        err.print(f"answers and verdicts: {path}")
    if save:
        err.print(f"router saved: {calibrated_path(settings)} (used by `auto` with these tiers)")


def _previous_outcomes(reuse: Path | None) -> list[Any] | None:
    """`--reuse FILE`: an earlier calibration's answers and verdicts, so the fit reruns without the models."""
    from ..routing.calibration import Outcome

    if reuse is None:
        return None
    if not reuse.is_file():
        raise InvalidOptionError(f"no outcomes file {reuse}")
    return [Outcome(**json.loads(line)) for line in reuse.read_text().splitlines() if line.strip()]


LlmModelFlag = Annotated[
    str | None, typer.Option(help="Model of the LLM classifier (default: the cheapest tier, or the default model).")
]
TimeSampleFlag = Annotated[
    int,
    typer.Option(
        min=0, help="Test queries per difficulty level that every tier answers to measure its time (0: skip timing)."
    ),
]


def eval_routing(
    classifier: Annotated[str, typer.Option(help="features, llm, or both.")] = "both",
    llm_model: LlmModelFlag = None,
    tier: TierFlag = None,
    time_sample: TimeSampleFlag = 5,
    num_predict: Annotated[int, typer.Option(min=1, help="Output cap for the timing sample.")] = 128,
    json_out: JsonFlag = False,
) -> None:
    """Router accuracy, macro-F1, confusion matrix and overhead on the test split; share of queries per
    tier and the time saved against always using the largest tier (real engine timings)."""
    from ..routing import load_queries, tiers_from_settings
    from ..routing.evaluation import report_dict

    if classifier not in ("features", "llm", "both"):
        raise InvalidOptionError("--classifier must be features, llm or both")
    settings = settings_with_tiers(tier)
    tiers = tiers_from_settings(settings)
    test = load_queries("test")
    with Client(settings) as client, progress_bar() as bar:
        reports, routed, shares = _evaluate_classifiers(client, settings, tiers, test, classifier, llm_model, bar)
        times = saved = None
        if time_sample and len(tiers) > 1:
            times, saved = _time_tiers(client, tiers, test, routed, time_sample, num_predict, bar)
    threshold = settings.routing.confidence_threshold
    data = report_dict(reports, shares, times, saved, tiers, threshold)
    if json_out:
        out.print_json(data=data)
        return
    print_routing_eval(reports, shares, threshold, times, saved, time_sample, num_predict, len(tiers))


def _evaluate_classifiers(
    client: Client,
    settings: Settings,
    tiers: list[Any],
    test: list[Any],
    classifier: str,
    llm_model: str | None,
    bar: Any,
) -> tuple[list[Any], Any, dict[str, float]]:
    """Each asked classifier's report on the test split, and the tiers the features classifier routes to."""
    from ..routing import LLMClassifier, router_embedder
    from ..routing.evaluation import (
        evaluate_classifier,
        feature_classifier_for_eval,
        routed_tiers_for,
        tier_shares,
    )

    reports = []
    embedder = router_embedder(settings.routing.embedder, client)
    features = feature_classifier_for_eval(embedder)
    if classifier in ("features", "both"):
        job = bar.add_task("features classifier", total=len(test))
        reports.append(evaluate_classifier(features, test, tiers, progress=lambda: bar.advance(job))[0])
    if classifier in ("llm", "both"):
        model = llm_model or settings.routing.llm_model or tiers[0].model
        llm = LLMClassifier(client, model, votes=settings.routing.llm_votes)
        job = bar.add_task(f"LLM classifier ({model})", total=len(test))
        reports.append(evaluate_classifier(llm, test, tiers, model=model, progress=lambda: bar.advance(job))[0])
    routed = routed_tiers_for(features, test, tiers, settings.routing.confidence_threshold)
    return reports, routed, tier_shares(routed, tiers)


def _time_tiers(
    client: Client, tiers: list[Any], test: list[Any], routed: Any, time_sample: int, num_predict: int, bar: Any
) -> tuple[Any, Any]:
    """Every tier answers a sample of the test split: its measured time, and the time routing saves."""
    from ..routing.evaluation import measure_tiers, sample_queries, time_saved

    sample = sample_queries(test, time_sample)
    job = bar.add_task("timing every tier", total=len(sample) * len(tiers))
    times = measure_tiers(client, tiers, sample, num_predict, progress=lambda: bar.advance(job))
    return times, time_saved(routed, [q.label for q in test], times)
