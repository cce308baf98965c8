"""`lmgauge route calibrate`: learn the router from what each tier actually gets right.

RouteLLM and the seed need preference data from elsewhere; here the user's own models answer
prompts whose answers can be checked by a program, so the router learns from outcomes on the
user's machine:

1. `make_tasks(n, seed)`: prompts in five families, each at several difficulties: arithmetic,
   unit conversions, extraction into JSON (schema-constrained), facts from a supplied table,
   and short Python functions that are executed against test cases.
2. `run_tiers`: every tier answers every prompt (temperature 0); each answer is checked and
   timed (client-clock E2E).
3. The label of a prompt is the cheapest tier that answered it correctly (the cheapest tier if
   none did: nothing is lost by not paying for a bigger one). The feature router is fitted on
   these labels together with the shipped labeled queries (their difficulty levels spread over
   the tiers), so it keeps its sense of general requests.
4. `quality_cost_curve`: out-of-fold (k-fold) router scores, and for each share of calls sent to
   the largest tier, the share of the largest tier's correct answers kept, RouteLLM's APGR and
   the share of the always-largest time spent. `cheapest_point` is the lowest share of calls to
   the largest tier that keeps >= 95% of its correct answers.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..embedding import Embedder
from ..errors import LmgaugeError
from .classifier import FeatureClassifier
from .queries import LEVELS, load_queries
from .tiers import Tier, spread

ANSWER_HINT = " End with a line 'Answer: <number>'."


@dataclass
class Task:
    id: str
    family: str  # arithmetic | units | extraction | table | code
    difficulty: int  # 0 easy, 1 medium, 2 hard
    prompt: str
    expected: Any
    format: dict[str, Any] | str | None = None
    num_predict: int = 96
    tests: list[tuple[Any, Any]] = field(default_factory=list)  # code: (argument, expected result)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _arithmetic(rng: random.Random, d: int) -> tuple[str, float]:
    if d == 0:
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        op = rng.choice(["+", "-"])
        return f"What is {a} {op} {b}?", a + b if op == "+" else a - b
    if d == 1:
        a, b = rng.randint(12, 99), rng.randint(3, 19)
        return f"What is {a} times {b}?", a * b
    a, b, c, e = rng.randint(101, 499), rng.randint(12, 48), rng.randint(10, 90), rng.choice([2, 4, 5])
    c = c * e
    return f"Compute {a} * {b} - {c} / {e}.", a * b - c / e


UNITS = [  # (question template, factor or function, difficulty)
    ("Convert {x} kilometers to meters.", lambda x: x * 1000, 0),
    ("How many minutes are in {x} hours?", lambda x: x * 60, 0),
    ("Convert {x} kilograms to grams.", lambda x: x * 1000, 0),
    ("How many seconds are in {x} days?", lambda x: x * 86400, 1),
    ("Convert {x} miles to kilometers (1 mile = 1.609 km).", lambda x: x * 1.609, 1),
    ("Convert {x} liters to milliliters.", lambda x: x * 1000, 0),
    ("Convert {x} degrees Fahrenheit to degrees Celsius.", lambda x: (x - 32) * 5 / 9, 2),
    ("A car drives at {x} km/h. What is its speed in meters per second?", lambda x: x / 3.6, 2),
    ("How many hours are in {x} weeks?", lambda x: x * 168, 1),
]


def _units(rng: random.Random, d: int) -> tuple[str, float]:
    choices = [u for u in UNITS if u[2] == d]
    template, convert, _ = rng.choice(choices)
    x = rng.choice([2, 3, 4, 5, 6, 8, 12, 15, 25]) if d < 2 else rng.choice([50, 59, 68, 77, 86, 95, 104, 72, 90, 108])
    return template.format(x=x), convert(x)


FIRST = ["Maria", "James", "Aiko", "Lars", "Fatima", "Diego", "Priya", "Tom", "Elena", "Kwame", "Sofia", "Ivan"]
LAST = ["Lopez", "Chen", "Okafor", "Berg", "Haddad", "Silva", "Nair", "Walsh", "Rossi", "Mensah", "Novak", "Park"]
CITIES = ["Denver", "Lyon", "Osaka", "Bergen", "Porto", "Accra", "Pune", "Cork", "Turin", "Quito", "Graz", "Busan"]
JOBS = ["nurse", "architect", "teacher", "pilot", "chef", "engineer", "lawyer", "baker"]


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _extraction(rng: random.Random, d: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    age, city, job = rng.randint(21, 79), rng.choice(CITIES), rng.choice(JOBS)
    if d == 0:
        text = f"{name}, {age}, lives in {city}."
        fields = {"name": name, "age": age, "city": city}
    elif d == 1:
        other = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        text = (
            f"Last spring {name} moved to {city} to work as {_a(job)}; {other}, a friend from school, "
            f"helped with the move. {name.split()[0]} turned {age} in May."
        )
        fields = {"name": name, "age": age, "city": city, "job": job}
    else:
        other, city2 = f"{rng.choice(FIRST)} {rng.choice(LAST)}", rng.choice([c for c in CITIES if c != city])
        born = 2024 - age
        text = (
            f"Born in {city2} in {born}, {name} trained as {_a(job)} before settling in {city}, where "
            f"{other} was already working. Nobody expected the move."
        )
        fields = {"name": name, "birth_year": born, "city": city, "job": job, "birthplace": city2}
    schema = {
        "type": "object",
        "properties": {k: {"type": "integer" if isinstance(v, int) else "string"} for k, v in fields.items()},
        "required": list(fields),
    }
    keys = ", ".join(fields)
    extra = " (city: where the person lives now)" if d == 2 else ""
    prompt = f"Extract {keys} of the main person{extra} from this text as JSON.\nText: {text}"
    return prompt, fields, schema


def _table(rng: random.Random, d: int) -> tuple[str, Any]:
    n = [4, 6, 8][d]
    cities = rng.sample(CITIES, n)
    pops = rng.sample(range(120, 990), n)
    rows = "\n".join(f"| {c} | {p} |" for c, p in zip(cities, pops, strict=True))
    table = f"| city | population (thousands) |\n|---|---|\n{rows}"
    if d == 0:
        i = rng.randrange(n)
        return f"{table}\n\nUsing the table, what is the population of {cities[i]} (in thousands)?", pops[i]
    if d == 1:
        return f"{table}\n\nUsing the table, which city has the largest population? Answer with the city name.", cities[
            int(np.argmax(pops))
        ]
    limit = sorted(pops)[n // 2] - 1
    count = sum(p > limit for p in pops)
    return f"{table}\n\nUsing the table, how many cities have a population above {limit} thousand?", count


CODE_TASKS: list[
    tuple[str, str, list[tuple[Any, Any]], int]
] = [  # (description, function name, test cases, difficulty)
    ("returns the square of a number x", "square", [(3, 9), (-4, 16), (0, 0)], 0),
    ("returns the string s reversed", "reverse", [("abc", "cba"), ("", ""), ("racecar", "racecar")], 0),
    ("returns True when the integer n is even and False otherwise", "is_even", [(4, True), (7, False), (0, True)], 0),
    ("returns the largest number in a non-empty list xs", "largest", [([3, 9, 2], 9), ([-5, -2], -2), ([7], 7)], 0),
    (
        "returns the sum of the decimal digits of a non-negative integer n",
        "digit_sum",
        [(123, 6), (0, 0), (9999, 36)],
        1,
    ),
    (
        "returns the number of vowels (a, e, i, o, u, either case) in a string s",
        "count_vowels",
        [("Hello World", 3), ("xyz", 0), ("AEIOU", 5)],
        1,
    ),
    (
        "returns the list xs without duplicates, keeping the first occurrence of each item in order",
        "dedupe",
        [([1, 2, 1, 3, 2], [1, 2, 3]), ([], []), (["a", "a"], ["a"])],
        1,
    ),
    ("returns the factorial of a non-negative integer n", "factorial", [(0, 1), (5, 120), (10, 3628800)], 1),
    ("returns the n-th prime number, where nth_prime(1) == 2", "nth_prime", [(1, 2), (6, 13), (25, 97)], 2),
    (
        "returns True when the string s is a palindrome ignoring case, spaces and punctuation",
        "is_palindrome",
        [("A man, a plan, a canal: Panama", True), ("hello", False), ("No 'x' in Nixon", True)],
        2,
    ),
    (
        "returns the length of the longest run of equal consecutive items in a list xs (0 for an empty list)",
        "longest_run",
        [([1, 1, 2, 2, 2, 3], 3), ([], 0), ([5], 1)],
        2,
    ),
    ("returns the n-th Fibonacci number, where fib(0) == 0 and fib(1) == 1", "fib", [(0, 0), (10, 55), (20, 6765)], 2),
]


def make_tasks(n: int = 125, seed: int = 0) -> list[Task]:
    """`n` checkable prompts, spread evenly over the five families and three difficulties."""
    rng = random.Random(seed)
    tasks: list[Task] = []
    families = ["arithmetic", "units", "extraction", "table", "code"]
    for i in range(n):
        family = families[i % len(families)]
        d = (i // len(families)) % 3
        tid = f"{family}-{i:03d}"
        if family == "arithmetic":
            q, expected = _arithmetic(rng, d)
            tasks.append(Task(tid, family, d, q + ANSWER_HINT, expected, num_predict=96))
        elif family == "units":
            q, expected = _units(rng, d)
            tasks.append(Task(tid, family, d, q + ANSWER_HINT, expected, num_predict=96))
        elif family == "extraction":
            q, fields, schema = _extraction(rng, d)
            tasks.append(Task(tid, family, d, q, fields, format=schema, num_predict=96))
        elif family == "table":
            q, expected = _table(rng, d)
            hint = " Answer with the city name only." if isinstance(expected, str) else ANSWER_HINT
            tasks.append(Task(tid, family, d, q + ("" if "city name" in q else hint), expected, num_predict=96))
        else:
            options = [c for c in CODE_TASKS if c[3] == d]
            desc, fname, tests, _ = options[(i // 15) % len(options)]
            q = (
                f"Write a Python function `{fname}` that {desc}. Reply with only the code in a ```python block, "
                "no explanation."
            )
            tasks.append(Task(tid, family, d, q, fname, num_predict=200, tests=tests))
    return tasks


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The last number on the line after the last "Answer:" (so "Answer: 91 * 11 = 1001" gives
    1001), else the last number in the text."""
    found: list[str] = []
    if "Answer:" in text:
        line = text.rsplit("Answer:", 1)[1].strip().split("\n", 1)[0]
        found = _NUM.findall(line)[-1:]
    if not found:
        found = _NUM.findall(text)[-1:]
    if not found:
        return None
    try:
        return float(found[0].replace(",", ""))
    except ValueError:
        return None


def check(task: Task, answer: str) -> bool:
    """Did the answer get it right? Numbers within 1% (or 0.01), strings case-insensitively,
    JSON field by field, code by running its tests."""
    if task.family == "extraction":
        try:
            data = json.loads(answer)
        except ValueError:
            return False
        if not isinstance(data, dict):
            return False
        return all(_same(data.get(k), v) for k, v in task.expected.items())
    if task.family == "code":
        return run_code_tests(answer, task.expected, task.tests)
    if isinstance(task.expected, str):  # a city from the table: named, and no other city of it
        low = answer.lower()
        others = [c for c in CITIES if c != task.expected and c in task.prompt]
        return task.expected.lower() in low and not any(c.lower() in low for c in others)
    value = final_number(answer)
    return value is not None and abs(value - task.expected) <= max(0.01, abs(task.expected) * 0.01)


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, int):
        try:
            return int(got) == want
        except (TypeError, ValueError):
            return False
    return isinstance(got, str) and got.strip().lower() == str(want).lower()


def extract_code(answer: str) -> str:
    blocks = re.findall(r"```(?:python|py)?\s*\n(.*?)```", answer, re.DOTALL)
    if blocks:
        return "\n".join(blocks)
    if "```" in answer:  # an unclosed block (cut off): take what follows the fence
        return answer.split("```", 1)[1].split("\n", 1)[-1]
    return answer


def run_code_tests(answer: str, fname: str, tests: list[tuple[Any, Any]], timeout: float = 10.0) -> bool:
    """Run the model's function against the test cases in a separate, isolated Python process
    (-I: no user site or environment; a temporary working directory; CPU-time and memory
    limits), so a wrong or hostile answer can only fail its own test."""
    code = extract_code(answer)
    harness = textwrap.dedent(f"""
        import json, sys
        ns = {{}}
        exec(compile(sys.stdin.read(), "<answer>", "exec"), ns)
        fn = ns[{fname!r}]
        cases = json.loads({json.dumps(json.dumps(tests))})
        sys.exit(0 if all(fn(arg) == want for arg, want in cases) else 1)
    """)
    with tempfile.TemporaryDirectory(prefix="lmgauge-code-") as cwd:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", harness],
                input=code,
                text=True,
                capture_output=True,
                timeout=timeout,
                cwd=cwd,
                env={"PATH": os.defpath},
                preexec_fn=_limits if os.name == "posix" else None,
            )
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == 0


def _limits() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (5, 5))
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@dataclass
class Outcome:
    task: str
    tier: str
    correct: bool
    e2e_ms: float | None
    output_tokens: int
    error: str | None = None
    answer: str = ""


def run_tiers(
    caller: Any, tiers: list[Tier], tasks: list[Task], progress: Callable[[str], None] | None = None
) -> list[Outcome]:
    """Every tier answers every task once (temperature 0, seed 0). A tier at a time, so each
    model is loaded once; an error is recorded as a wrong answer with its message."""
    outcomes: list[Outcome] = []
    for tier in tiers:
        for task in tasks:
            options = {"temperature": 0, "seed": 0, "num_predict": task.num_predict}
            try:
                result = caller.chat(
                    tier.model, [{"role": "user", "content": task.prompt}], options=options, format=task.format
                )
                ok = check(task, result.content)
                outcomes.append(
                    Outcome(
                        task.id,
                        tier.name,
                        ok,
                        result.timings.e2e_ms,
                        result.timings.output_tokens,
                        answer=result.content[:2000],
                    )
                )
            except LmgaugeError as exc:
                outcomes.append(Outcome(task.id, tier.name, False, None, 0, error=str(exc)))
            if progress is not None:
                progress(tier.name)
    return outcomes


def outcome_matrix(tasks: list[Task], tiers: list[Tier], outcomes: list[Outcome]) -> tuple[np.ndarray, np.ndarray]:
    """(correct, e2e_ms) arrays of shape (tasks, tiers). A failed call's time is the tier's
    median, so an error does not look free."""
    index = {(o.task, o.tier): o for o in outcomes}
    correct = np.zeros((len(tasks), len(tiers)), dtype=bool)
    times = np.full((len(tasks), len(tiers)), np.nan)
    for i, task in enumerate(tasks):
        for j, tier in enumerate(tiers):
            o = index.get((task.id, tier.name))
            if o is not None:
                correct[i, j] = o.correct
                times[i, j] = o.e2e_ms if o.e2e_ms is not None else np.nan
    for j in range(len(tiers)):
        col = times[:, j]
        col[np.isnan(col)] = np.nanmedian(col) if not np.all(np.isnan(col)) else 0.0
    return correct, times


def cheapest_correct(correct: np.ndarray) -> np.ndarray:
    """Per task, the index of the cheapest tier that got it right (0 when none did)."""
    labels = np.zeros(len(correct), dtype=int)
    for i, row in enumerate(correct):
        right = np.flatnonzero(row)
        labels[i] = right[0] if len(right) else 0
    return labels


def labeled_as_tiers(tiers: list[Tier]) -> tuple[list[str], list[str]]:
    """The shipped labeled queries, their difficulty level spread over the tiers."""
    data = load_queries()
    names = [t.name for t in tiers]
    texts, labels = [], []
    for q in data:
        position = LEVELS.index(q.label)
        texts.append(q.text)
        labels.append(names[spread(position, len(LEVELS), len(names))])
    return texts, labels


def fit_router(
    tasks: list[Task], labels: np.ndarray, tiers: list[Tier], embedder: Embedder, include_labeled: bool = True
) -> FeatureClassifier:
    names = [t.name for t in tiers]
    texts = [t.prompt for t in tasks]
    y = [names[i] for i in labels]
    if include_labeled:
        extra_texts, extra_labels = labeled_as_tiers(tiers)
        texts, y = texts + extra_texts, y + extra_labels
    return FeatureClassifier(embedder).fit(texts, y, classes=names)


def out_of_fold_proba(
    tasks: list[Task],
    labels: np.ndarray,
    tiers: list[Tier],
    embedder: Embedder,
    folds: int = 5,
    seed: int = 0,
    include_labeled: bool = True,
) -> np.ndarray:
    """Router probabilities for each task from a router that never saw it (k-fold)."""
    order = np.random.default_rng(seed).permutation(len(tasks))
    proba = np.zeros((len(tasks), len(tiers)))
    for f in range(folds):
        held = order[f::folds]
        train = np.setdiff1d(order, held)
        clf = fit_router([tasks[i] for i in train], labels[train], tiers, embedder, include_labeled)
        proba[held] = clf.predict_proba([tasks[i].prompt for i in held])
    return proba


@dataclass
class CurvePoint:
    share_largest: float  # share of calls sent to the largest tier
    kept: float  # correct answers / correct answers of always-largest
    apgr: float  # (correct - always-smallest) / (always-largest - always-smallest)
    accuracy: float
    time_share: float  # E2E time spent / E2E time of always-largest
    calls: dict[str, float]  # share of calls per tier


def quality_cost_curve(
    proba: np.ndarray, correct: np.ndarray, times: np.ndarray, tier_names: list[str]
) -> list[CurvePoint]:
    """Sweep the share of calls sent to the largest tier, RouteLLM style: the tasks the router
    thinks most need the largest tier go there first; the rest go to the router's choice among
    the smaller tiers."""
    n, k = correct.shape
    largest = k - 1
    rank = np.argsort(-proba[:, largest], kind="stable")
    smaller_choice = np.argmax(proba[:, :largest], axis=1) if k > 1 else np.zeros(n, dtype=int)
    strong = correct[:, largest].sum()
    weak = correct[:, 0].sum()
    total_time = times[:, largest].sum() or 1.0
    points: list[CurvePoint] = []
    for m in range(n + 1):
        choice = smaller_choice.copy()
        choice[rank[:m]] = largest
        got = correct[np.arange(n), choice].sum()
        calls = {name: float(np.mean(choice == j)) for j, name in enumerate(tier_names)}
        points.append(
            CurvePoint(
                share_largest=m / n if n else 0.0,
                kept=float(got / strong) if strong else 1.0,
                apgr=float((got - weak) / (strong - weak)) if strong != weak else 1.0,
                accuracy=float(got / n) if n else 0.0,
                time_share=float(times[np.arange(n), choice].sum() / total_time),
                calls=calls,
            )
        )
    return points


def cheapest_point(points: list[CurvePoint], keep: float = 0.95) -> CurvePoint | None:
    """The point with the fewest calls to the largest tier that keeps `keep` of its correct answers."""
    for p in points:
        if p.kept >= keep:
            return p
    return None


def summarize_curve(points: list[CurvePoint], steps: int = 10) -> list[CurvePoint]:
    """About `steps` + 1 evenly spaced points of the curve, for a table."""
    n = len(points) - 1
    if n <= steps:
        return points
    picks = sorted({round(i * n / steps) for i in range(steps + 1)})
    return [points[i] for i in picks]


@dataclass
class CalibrationReport:
    tiers: dict[str, str]
    tasks: int
    accuracy: dict[str, float]  # per tier: share of tasks answered correctly
    accuracy_by_family: dict[str, dict[str, float]]
    mean_e2e_ms: dict[str, float]  # per tier
    label_share: dict[str, float]  # share of tasks whose cheapest correct tier is each tier
    curve: list[CurvePoint]
    point: CurvePoint | None  # fewest calls to the largest tier keeping >= keep of its correct answers
    keep: float
    router_accuracy_oof: float  # out-of-fold accuracy of the fitted router on the labels
    random_kept_at_point: float | None  # what random routing keeps with the same share of calls

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["curve"] = [asdict(p) for p in self.curve]
        data["point"] = asdict(self.point) if self.point else None
        return data


def calibrate(
    caller: Any,
    tiers: list[Tier],
    embedder: Embedder,
    tasks: list[Task],
    *,
    keep: float = 0.95,
    folds: int = 5,
    progress: Callable[[str], None] | None = None,
    outcomes: list[Outcome] | None = None,
) -> tuple[CalibrationReport, FeatureClassifier, list[Outcome]]:
    """Run (or reuse `outcomes`), label, fit, and measure the quality-vs-cost curve."""
    if len(tiers) < 2:
        raise LmgaugeError("calibration compares tiers: configure at least two ([routing] tiers, or --tier)")
    outcomes = outcomes if outcomes is not None else run_tiers(caller, tiers, tasks, progress)
    correct, times = outcome_matrix(tasks, tiers, outcomes)
    labels = cheapest_correct(correct)
    names = [t.name for t in tiers]
    proba = out_of_fold_proba(tasks, labels, tiers, embedder, folds=folds)
    curve = quality_cost_curve(proba, correct, times, names)
    point = cheapest_point(curve, keep)
    strong, weak = correct[:, -1].sum(), correct[:, 0].sum()
    random_kept = None
    if point is not None and strong:
        # random routing between smallest and largest at the same share of calls to the largest
        random_kept = float((point.share_largest * strong + (1 - point.share_largest) * weak) / strong)
    families = sorted({t.family for t in tasks})
    report = CalibrationReport(
        tiers={t.name: t.model for t in tiers},
        tasks=len(tasks),
        accuracy={n: float(correct[:, j].mean()) for j, n in enumerate(names)},
        accuracy_by_family={
            n: {f: float(np.mean([correct[i, j] for i, t in enumerate(tasks) if t.family == f])) for f in families}
            for j, n in enumerate(names)
        },
        mean_e2e_ms={n: float(times[:, j].mean()) for j, n in enumerate(names)},
        label_share={n: float(np.mean(labels == j)) for j, n in enumerate(names)},
        curve=curve,
        point=point,
        keep=keep,
        router_accuracy_oof=float(np.mean(np.argmax(proba, axis=1) == labels)),
        random_kept_at_point=random_kept,
    )
    classifier = fit_router(tasks, labels, tiers, embedder)
    return report, classifier, outcomes
