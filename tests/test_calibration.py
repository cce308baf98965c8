"""`route calibrate`: checkable tasks, answer checking (code runs in a separate process), the
quality-vs-cost curve, and a whole calibration against stand-in tiers through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lmgauge.client import Client
from lmgauge.routing import Router
from lmgauge.routing.calibration import (
    CODE_TASKS,
    cheapest_correct,
    cheapest_point,
    check,
    extract_code,
    final_number,
    make_tasks,
    quality_cost_curve,
    run_code_tests,
)
from support.standins import OllamaStandin

SOLUTIONS = {
    "square": "def square(x):\n    return x * x",
    "reverse": "def reverse(s):\n    return s[::-1]",
    "is_even": "def is_even(n):\n    return n % 2 == 0",
    "largest": "def largest(xs):\n    return max(xs)",
    "digit_sum": "def digit_sum(n):\n    return sum(int(c) for c in str(n))",
    "count_vowels": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
    "dedupe": "def dedupe(xs):\n    out = []\n    for x in xs:\n        if x not in out:\n            out.append(x)\n"
    "    return out",
    "factorial": "import math\ndef factorial(n):\n    return math.factorial(n)",
    "nth_prime": "def nth_prime(n):\n    found, k = 0, 1\n    while found < n:\n        k += 1\n"
    "        if all(k % d for d in range(2, int(k ** 0.5) + 1)):\n            found += 1\n    return k",
    "is_palindrome": "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]",
    "longest_run": "def longest_run(xs):\n    best = run = 0\n    for i, x in enumerate(xs):\n"
    "        run = run + 1 if i and xs[i - 1] == x else 1\n        best = max(best, run)\n    return best",
    "fib": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
}


def right_answer(task) -> str:
    if task.family == "code":
        return f"```python\n{SOLUTIONS[task.expected]}\n```"
    if task.family == "extraction":
        return json.dumps(task.expected)
    if isinstance(task.expected, str):
        return task.expected
    return f"Let me compute.\nAnswer: {task.expected:g}"


# --- tasks and checks ------------------------------------------------------------------------------------


def test_tasks_cover_every_family_and_difficulty():
    tasks = make_tasks(45, seed=3)
    assert {(t.family, t.difficulty) for t in tasks} == {
        (f, d) for f in ("arithmetic", "units", "extraction", "table", "code") for d in (0, 1, 2)
    }
    assert make_tasks(45, seed=3) == tasks  # seeded: the same prompts every run
    assert make_tasks(45, seed=4) != tasks


def test_every_task_accepts_its_right_answer_and_rejects_a_wrong_one():
    for task in make_tasks(60):
        assert check(task, right_answer(task)), task
        assert not check(task, "Answer: -12345"), task


@pytest.mark.parametrize("name, solution", list(SOLUTIONS.items()))
def test_reference_solutions_pass_their_tests(name, solution):
    tests = next(c[2] for c in CODE_TASKS if c[1] == name)
    assert run_code_tests(f"```python\n{solution}\n```", name, tests)


def test_model_code_runs_isolated_and_bounded():
    tests = [(3, 9)]
    assert not run_code_tests("def square(x):\n    while True: pass", "square", tests, timeout=3)
    assert not run_code_tests("def square(x):\n    return open('/etc/hostname').read()", "square", tests)
    assert not run_code_tests("def other(x): return x * x", "square", tests)
    assert not run_code_tests("this is not python", "square", tests)
    assert run_code_tests("Sure!\n```python\ndef square(x):\n    return x**2\n```\nHope it helps.", "square", tests)


def test_numbers_are_read_from_the_answer_line():
    assert final_number("3 * 4 = 12\nAnswer: 12") == 12
    assert final_number("Answer: 91 * 11 = 1001") == 1001
    assert final_number("the result is 1,234.5") == 1234.5
    assert final_number("no idea") is None
    assert extract_code("```python\nx = 1\n") == "x = 1\n"  # an unclosed block, cut off


def test_table_answers_must_name_only_the_right_city():
    task = next(t for t in make_tasks(60) if t.family == "table" and isinstance(t.expected, str))
    other = next(
        c
        for c in (
            "Denver",
            "Lyon",
            "Osaka",
            "Bergen",
            "Porto",
            "Accra",
            "Pune",
            "Cork",
            "Turin",
            "Quito",
            "Graz",
            "Busan",
        )
        if c in task.prompt and c != task.expected
    )
    assert check(task, f"The largest is {task.expected}.")
    assert not check(task, f"{task.expected} or {other}")


# --- the curve ---------------------------------------------------------------------------------------------


def test_labels_are_the_cheapest_correct_tier():
    correct = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=bool)
    assert cheapest_correct(correct).tolist() == [0, 1, 2, 0, 0]


def test_curve_from_a_perfect_router_and_its_cheapest_point():
    # 10 tasks; the small tier gets the first 6 right, the large one gets all but the last right.
    correct = np.array([[i < 6, i < 9] for i in range(10)], dtype=bool)
    times = np.array([[1.0, 10.0]] * 10)
    needs_large = np.array([0.0] * 6 + [1.0] * 4)  # a router that knows exactly
    proba = np.stack([1 - needs_large, needs_large], axis=1)
    curve = quality_cost_curve(proba, correct, times, ["small", "large"])
    assert len(curve) == 11 and [p.share_largest for p in curve] == [i / 10 for i in range(11)]
    assert curve[0].kept == pytest.approx(6 / 9) and curve[0].apgr == 0.0
    assert curve[-1].kept == 1.0 and curve[-1].apgr == 1.0 and curve[-1].time_share == 1.0
    point = cheapest_point(curve, 0.95)
    assert point.share_largest == pytest.approx(0.3) and point.kept == 1.0
    assert point.time_share == pytest.approx((7 * 1 + 3 * 10) / 100)
    assert point.calls == {"small": pytest.approx(0.7), "large": pytest.approx(0.3)}


# --- a whole calibration through the CLI ----------------------------------------------------------------------


def test_calibrate_command_fits_and_saves_a_router_for_the_tiers(start_standin, isolated_home, settings):
    tasks = {t.prompt: t for t in make_tasks(25)}
    server = start_standin(
        OllamaStandin,
        models=["small", "large"],
        reply=lambda body: (
            "Answer: 0" if body["model"].startswith("small") else right_answer(tasks[body["messages"][-1]["content"]])
        ),
    )
    env = {**os.environ, "LMGAUGE_OLLAMA_HOST": server.url}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmgauge",
            "route",
            "calibrate",
            "--tier",
            "small=ollama:small",
            "--tier",
            "large=ollama:large",
            "--tasks",
            "25",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # extraction asks for a schema, which the stand-in fills with placeholders: wrong for both tiers
    assert report["accuracy"]["large"] == pytest.approx(20 / 25)
    assert report["accuracy"]["small"] < 0.2
    assert len(report["curve"]) == 26 and report["point"]["kept"] >= 0.95
    assert len(server.received("/api/chat")) == 50
    outcomes = [json.loads(line) for line in (isolated_home / "calibration-outcomes.jsonl").read_text().splitlines()]
    assert len(outcomes) == 50 and {o["tier"] for o in outcomes} == {"small", "large"}
    # the saved router is the one `auto` uses for these tiers, with the tiers as its classes
    s = settings.model_copy(
        update={
            "routing": settings.routing.model_copy(update={"tiers": {"small": "ollama:small", "large": "ollama:large"}})
        }
    )
    with Client(s) as client:
        router = Router.from_settings(client, s)
    assert router.classifier.classes == ("small", "large")
    arithmetic = next(p for p, t in tasks.items() if t.family == "arithmetic")
    assert router.route([{"role": "user", "content": arithmetic}]).tier == "large"  # small got these wrong

    # refitting from the saved outcomes needs no model at all
    server.stop()
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmgauge",
            "route",
            "calibrate",
            "--tier",
            "small=ollama:small",
            "--tier",
            "large=ollama:large",
            "--tasks",
            "25",
            "--reuse",
            str(isolated_home / "calibration-outcomes.jsonl"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["accuracy"] == report["accuracy"]


def test_calibrate_needs_two_tiers():
    proc = subprocess.run(
        [sys.executable, "-m", "lmgauge", "route", "calibrate", "--tier", "only=smollm2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "at least two" in proc.stderr and "Traceback" not in proc.stderr
