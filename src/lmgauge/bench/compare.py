"""`lmgauge compare RUN_A RUN_B`: per metric, how B differs from A and whether it is real.

Like benchstat: for each group both runs measured (same model and prompt, context size or
load level) and each metric, the medians, the relative delta, the Mann-Whitney U p-value and a
bootstrap 95% CI of the delta. Every value compared is one per request (ITL as each request's
median gap), since the test assumes independent samples. A delta is called significant when
p < alpha and the interval excludes 0; "~" when neither says so (within the noise of these
samples); "unclear" when they disagree; "too few" when the samples are so few that the test
could not reach alpha whatever they are (2 vs 2 requests: the smallest possible p is 0.33), and
then no interval is shown either. Groups only one run measured are listed, not silently dropped.

Runs of different models (A on one model, B on another, same prompts) are compared group by
group on the prompt alone, so "is model B faster than model A here?" works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError
from .metrics import Comparison, compare_samples, percentile
from .results import Run, Sample, group_key

# metric -> True when higher is better
COMPARED = {
    "ttft_ms": False,
    "tpot_ms": False,
    "itl_ms": False,
    "e2e_ms": False,
    "decode_tps": True,
    "prefill_tps": True,
}


@dataclass
class Row:
    group: str
    metric: str
    comparison: Comparison
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        c = self.comparison
        if c.too_few:
            return "too few"  # the test cannot reach alpha at this n: no claim either way
        if not c.agree:
            return "unclear"  # the test and the interval disagree: measure more
        if c.delta is None or not c.significant:
            return "~"
        better = (c.delta > 0) == self.higher_is_better
        return "better" if better else "worse"

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "metric": self.metric, "verdict": self.verdict, **self.comparison.to_dict()}


def _groups(run: Run, by_prompt_only: bool) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in run.samples:
        if s.status != "ok":
            continue
        model, group = group_key(s)
        out.setdefault(group if by_prompt_only else f"{model} · {group}", []).append(s)
    return out


def unmatched_groups(a: Run, b: Run) -> tuple[list[str], list[str]]:
    """Groups (model · prompt, or prompt alone across models) only one run measured successfully:
    they are not compared, and the CLI says so."""
    by_prompt_only = _by_prompt_only(a, b)
    ga, gb = _groups(a, by_prompt_only), _groups(b, by_prompt_only)
    return [g for g in ga if g not in gb], [g for g in gb if g not in ga]


def _by_prompt_only(a: Run, b: Run) -> bool:
    single = len({s.model for s in a.samples}) == 1 and len({s.model for s in b.samples}) == 1
    return single and {s.model for s in a.samples} != {s.model for s in b.samples}


def min_samples(alpha: float) -> int:
    """Requests per side (equal sizes) below which the Mann-Whitney test cannot reach alpha."""
    import math

    n = 1
    while 2 / math.comb(2 * n, n) >= alpha:
        n += 1
    return n


def compare_runs(a: Run, b: Run, alpha: float = 0.05) -> list[Row]:
    if a.kind != b.kind:
        raise InvalidOptionError(f"cannot compare a {a.kind} run with a {b.kind} run")
    by_prompt_only = _by_prompt_only(a, b)
    ga, gb = _groups(a, by_prompt_only), _groups(b, by_prompt_only)
    common = [g for g in ga if g in gb]
    if not common:
        raise InvalidOptionError(
            f"runs {a.id} and {b.id} share no model/prompt group to compare "
            f"(A: {', '.join(ga) or 'no successful requests'}; B: {', '.join(gb) or 'no successful requests'})"
        )
    rows = []
    for group in common:
        for name, higher in COMPARED.items():
            if name == "itl_ms":  # one value per request: pooled gaps of a request are not independent
                va, vb = [_median(s.itl_ms) for s in ga[group]], [_median(s.itl_ms) for s in gb[group]]
            else:
                va = [getattr(s, name) for s in ga[group]]
                vb = [getattr(s, name) for s in gb[group]]
            c = compare_samples(va, vb, alpha=alpha)
            if c.n_a and c.n_b:
                rows.append(Row(group, name, c, higher))
    return rows


def _median(values: list[float]) -> float | None:
    return percentile(values, 50)
