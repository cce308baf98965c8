"""The router: the labeled set, the classifiers, tier choice, answer checks and escalation (with
real stand-in Ollama servers answering as the tiers)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from lmgauge.client import Client
from lmgauge.config import Settings
from lmgauge.embedding import make_embedder
from lmgauge.errors import InvalidOptionError
from lmgauge.routing import (
    FEATURE_NAMES,
    LEVELS,
    LLM_FORMAT,
    FeatureClassifier,
    LLMClassifier,
    Router,
    Tier,
    check_answer,
    default_classifier,
    fit_logistic,
    load_calibrated,
    load_queries,
    parse_tiers,
    request_text,
    save_calibrated,
    text_features,
)
from lmgauge.store import Store
from lmgauge.types import Result, Timings
from support.standins import OllamaStandin


@pytest.fixture(scope="module")
def embedder():
    return make_embedder("wordllama")


class Fixed:
    """A classifier that always answers the same probabilities (to test the router around it)."""

    name = "fixed"

    def __init__(self, probs, classes=LEVELS):
        self.classes = tuple(classes)
        self.probs = np.array(probs, dtype=np.float32)

    def predict_proba(self, texts):
        return np.tile(self.probs, (len(texts), 1))


def result(content="fine", done_reason="stop"):
    return Result(model="m", content=content, done_reason=done_reason, timings=Timings())


# --- the labeled set -------------------------------------------------------------------------------


def test_labeled_set_is_large_varied_and_split():
    data = load_queries()
    assert len(data) >= 300
    assert len({q.text for q in data}) == len(data)
    assert {q.label for q in data} == set(LEVELS)
    counts = Counter((q.label, q.split) for q in data)
    for level in LEVELS:
        assert counts[level, "train"] > counts[level, "test"] > 20
    assert len(load_queries("train")) + len(load_queries("test")) == len(data)


# --- features and the classifier ----------------------------------------------------------------------


def test_features_see_code_math_and_length():
    short = dict(zip(FEATURE_NAMES, text_features("What is the capital of France?"), strict=True))
    code = dict(
        zip(FEATURE_NAMES, text_features("Refactor this:\n```python\ndef f(x):\n    return x\n```"), strict=True)
    )
    proof = dict(
        zip(FEATURE_NAMES, text_features("Prove the theorem and derive the formula for the variance."), strict=True)
    )
    assert short["simple_start"] == 1 and code["simple_start"] == 0
    assert code["code_marks"] >= 2 and short["code_marks"] == 0
    assert proof["math_words"] >= 3
    assert code["log_chars"] > short["log_chars"]


def test_logistic_regression_separates_separable_data():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(-2, 0.5, (30, 2)), rng.normal(2, 0.5, (30, 2))]).astype(np.float32)
    y = np.array([0] * 30 + [1] * 30)
    w, b = fit_logistic(x, y, 2)
    assert ((x @ w + b).argmax(axis=1) == y).mean() == 1.0


def test_feature_classifier_generalizes_to_the_test_split(embedder):
    clf = default_classifier(embedder, split="train")
    test = load_queries("test")
    proba = clf.predict_proba([q.text for q in test])
    assert proba.shape == (len(test), 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    accuracy = np.mean([LEVELS[i] == q.label for i, q in zip(proba.argmax(axis=1), test, strict=True)])
    assert accuracy >= 0.85


def test_classifier_round_trips_through_its_dict(embedder):
    clf = FeatureClassifier(embedder).fit(
        ["hi", "what is 2+2", "design a distributed database", "explain tcp vs udp"],
        ["simple", "simple", "complex", "moderate"],
        classes=LEVELS,
    )
    again = FeatureClassifier.from_dict(json.loads(json.dumps(clf.to_dict())), embedder)
    texts = ["hello there", "design a scalable queue"]
    assert np.allclose(clf.predict_proba(texts), again.predict_proba(texts))


def test_unknown_label_is_a_clear_error(embedder):
    with pytest.raises(InvalidOptionError, match="hard"):
        FeatureClassifier(embedder).fit(["a", "b"], ["simple", "hard"], classes=LEVELS)


# --- deciding ------------------------------------------------------------------------------------------


TIERS3 = [Tier("small", "s"), Tier("medium", "m"), Tier("large", "l")]


def test_levels_map_onto_any_number_of_tiers():
    two = [Tier("small", "s"), Tier("large", "l")]
    assert Router(None, two, Fixed([0.9, 0.05, 0.05])).route([{"role": "user", "content": "x"}]).tier == "small"
    assert Router(None, two, Fixed([0.05, 0.05, 0.9])).route([{"role": "user", "content": "x"}]).tier == "large"
    # halfway rounds up: a moderate request on two tiers goes to the larger one
    assert Router(None, two, Fixed([0.05, 0.9, 0.05])).route([{"role": "user", "content": "x"}]).tier == "large"
    one = [Tier("only", "o")]
    assert Router(None, one, Fixed([0.05, 0.05, 0.9])).route([{"role": "user", "content": "x"}]).tier == "only"


def test_calibrated_classes_are_the_tiers():
    d = Router(None, TIERS3, Fixed([0.1, 0.8, 0.1], classes=["small", "medium", "large"])).route(
        [{"role": "user", "content": "x"}]
    )
    assert (d.tier, d.model, d.label) == ("medium", "m", "medium")


def test_low_confidence_goes_one_tier_up():
    router = Router(None, TIERS3, Fixed([0.45, 0.35, 0.2]), threshold=0.5)
    d = router.route([{"role": "user", "content": "x"}])
    assert d.tier == "medium" and d.label == "simple" and d.confidence == pytest.approx(0.45)
    assert "threshold" in d.reason
    sure = Router(None, TIERS3, Fixed([0.9, 0.05, 0.05]), threshold=0.5).route([{"role": "user", "content": "x"}])
    assert sure.tier == "small" and "threshold" not in sure.reason


def test_the_last_user_message_is_classified():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    assert request_text(messages) == "second"


def test_tier_flags_parse_in_order():
    assert list(parse_tiers(["small=smollm2", "large=ollama:qwen2.5:7b"]).items()) == [
        ("small", "smollm2"),
        ("large", "ollama:qwen2.5:7b"),
    ]
    with pytest.raises(InvalidOptionError, match="NAME=MODEL"):
        parse_tiers(["smollm2"])
    with pytest.raises(InvalidOptionError, match="twice"):
        parse_tiers(["a=x", "a=y"])


# --- answer checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, fmt, why",
    [
        (result(""), None, "empty"),
        (result("   \n"), None, "empty"),
        (result("The answer is", "length"), None, "cut off"),
        (result('{"a": 1'), "json", "invalid JSON"),
        (result('{"a": 1}'), {"type": "object", "required": ["a", "b"]}, "b"),
        (result("I'm sorry, but I can't help with that."), None, "refused"),
        (result("As an AI language model, I cannot provide medical advice."), None, "refused"),
    ],
)
def test_failed_answers_are_caught(answer, fmt, why):
    assert why in check_answer(answer, fmt)


@pytest.mark.parametrize(
    "answer, fmt",
    [
        (result("Paris."), None),
        (result('{"a": 1, "b": 2}'), {"type": "object", "required": ["a", "b"]}),
        (result("[1, 2]"), "json"),
        (result("I can't say for sure, but it is likely Paris."), None),  # hedging is not refusing
    ],
)
def test_good_answers_pass(answer, fmt):
    assert check_answer(answer, fmt) is None


# --- escalation through real servers ---------------------------------------------------------------------


def tier_server(start_standin, replies):
    """One stand-in Ollama serving a model per tier, each with its own reply."""
    return start_standin(OllamaStandin, models=list(replies), reply=lambda body: replies[body["model"].split(":")[0]])


def test_failed_answers_escalate_and_each_reason_is_logged(start_standin, settings):
    server = tier_server(
        start_standin,
        {"small": "", "medium": "I'm sorry, but I cannot help with that.", "large": "Paris is the capital of France."},
    )
    tiers = [Tier("small", "ollama:small"), Tier("medium", "ollama:medium"), Tier("large", "ollama:large")]
    store = Store(settings.db_path)
    with Client(Settings(ollama_host=server.url)) as client:
        answer = Router(client, tiers, Fixed([0.9, 0.05, 0.05]), store=store).answer(
            [{"role": "user", "content": "What is the capital of France?"}]
        )
    assert answer.result.content == "Paris is the capital of France."
    assert [(a.tier, a.status) for a in answer.attempts] == [
        ("small", "failed_check"),
        ("medium", "failed_check"),
        ("large", "ok"),
    ]
    assert answer.attempts[0].reason == "empty answer" and "refused" in answer.attempts[1].reason
    assert answer.tier == "large" and answer.decision.tier == "small" and answer.escalated
    assert [r.body["model"] for r in server.received("/api/chat")] == ["small", "medium", "large"]
    with store.connect() as db:
        row = db.execute("SELECT first_tier, final_tier, attempts FROM route_log").fetchone()
    assert (row["first_tier"], row["final_tier"]) == ("small", "large")
    assert [a["reason"] for a in json.loads(row["attempts"])] == [a.reason for a in answer.attempts]


def test_a_failing_server_escalates_too(start_standin):
    server = tier_server(start_standin, {"small": "x", "large": "fine answer"})
    server.faults.status, server.faults.times = 500, 1  # only the first request (the small tier's) fails
    tiers = [Tier("small", "ollama:small"), Tier("large", "ollama:large")]
    with Client(Settings(ollama_host=server.url)) as client:
        answer = Router(client, tiers, Fixed([0.9, 0.05, 0.05])).answer([{"role": "user", "content": "hi"}])
    assert answer.result.content == "fine answer"
    assert answer.attempts[0].status == "error" and "500" in answer.attempts[0].reason


def test_without_escalation_the_first_answer_stands(start_standin):
    server = tier_server(start_standin, {"small": "", "large": "fine"})
    tiers = [Tier("small", "ollama:small"), Tier("large", "ollama:large")]
    with Client(Settings(ollama_host=server.url)) as client:
        answer = Router(client, tiers, Fixed([0.9, 0.05, 0.05]), escalate=False).answer(
            [{"role": "user", "content": "hi"}]
        )
    assert answer.result.content == "" and answer.attempts[0].status == "failed_check"
    assert len(server.received("/api/chat")) == 1


def test_a_stream_shows_only_the_accepted_answer(start_standin):
    server = tier_server(
        start_standin, {"small": "I am unable to help with that request.", "large": "Here is a full answer."}
    )
    tiers = [Tier("small", "ollama:small"), Tier("large", "ollama:large")]
    with Client(Settings(ollama_host=server.url)) as client:
        stream = Router(client, tiers, Fixed([0.9, 0.05, 0.05])).answer_stream([{"role": "user", "content": "hi"}])
        chunks = list(stream)
    assert "".join(c.content for c in chunks) == "Here is a full answer."
    assert chunks[-1].done and chunks[-1].result.content == "Here is a full answer."
    assert [a.tier for a in stream.attempts] == ["small", "large"] and stream.decision.tier == "small"


def test_llm_classifier_is_constrained_to_the_labels(start_standin):
    server = start_standin(OllamaStandin, models=["judge"])
    with Client(Settings(ollama_host=server.url)) as client:
        clf = LLMClassifier(client, "ollama:judge", votes=3)
        proba = clf.predict_proba(["What is 2 + 2?"])
    sent = server.last("/api/chat").body
    assert sent["format"] == LLM_FORMAT and sent["format"]["properties"]["level"]["enum"] == list(LEVELS)
    assert len(server.received("/api/chat")) == 3  # one request per vote
    # the stand-in answers the schema's first enum value every time: unanimous
    assert proba.tolist() == [[1.0, 0.0, 0.0]]


def test_calibrated_router_is_used_only_for_its_own_tiers(tmp_path, embedder):
    clf = FeatureClassifier(embedder).fit(["hi", "prove it", "explain it"], ["a", "b", "a"], classes=["a", "b"])
    path = tmp_path / "router.json"
    save_calibrated(path, [Tier("a", "smollm2"), Tier("b", "big")], clf)
    assert load_calibrated(path, [Tier("a", "smollm2"), Tier("b", "big")], embedder).classes == ("a", "b")
    assert load_calibrated(path, [Tier("a", "smollm2"), Tier("b", "other")], embedder) is None
    path.write_text("{broken")
    with pytest.raises(InvalidOptionError, match="calibrate"):
        load_calibrated(path, [Tier("a", "smollm2")], embedder)


def test_router_from_settings_reads_tiers_and_classifier(settings):
    s = settings.model_copy(
        update={"routing": settings.routing.model_copy(update={"tiers": {"small": "smollm2", "large": "ollama:big"}})}
    )
    with Client(s) as client:
        router = Router.from_settings(client, s)
        assert [t.name for t in router.tiers] == ["small", "large"] and router.classifier.name == "features"
        assert router.route([{"role": "user", "content": "hi!"}]).tier == "small"
        with pytest.raises(InvalidOptionError, match="classifier"):
            Router.from_settings(client, s, classifier="magic")


# --- the real model -------------------------------------------------------------------------------------


@pytest.mark.integration
def test_llm_classifier_with_the_embedded_model_gives_a_label():
    with Client() as client:
        # zero-shot and one vote keep it short; the grammar must still force one of the labels
        proba = LLMClassifier(client, "smollm2", votes=1, examples=[]).predict_proba(["hi there", "Design a database."])
    assert proba.shape == (2, 3) and set(proba.flatten().tolist()) == {0.0, 1.0}  # one valid label per query


@pytest.mark.integration
def test_a_cut_off_answer_escalates_on_the_embedded_model(settings):
    tiers = [Tier("small", "smollm2"), Tier("large", "smollm2:135m")]
    with Client(settings) as client:
        answer = Router(client, tiers, Fixed([0.9, 0.05, 0.05])).answer(
            [{"role": "user", "content": "Tell me a long story about a dragon."}],
            options={"num_predict": 3, "temperature": 0},
        )
    assert [a.tier for a in answer.attempts] == ["small", "large"]
    assert "cut off" in answer.attempts[0].reason and answer.attempts[1].status == "failed_check"
    assert answer.result.done_reason == "length" and answer.result.content


# --- the commands -----------------------------------------------------------------------------------------


def lmgauge(*args, env_extra=None, timeout=300):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "lmgauge", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env_extra or {})},
        timeout=timeout,
    )


def test_eval_routing_reports_accuracy_f1_confusion_and_overhead():
    proc = lmgauge("eval", "routing", "--classifier", "features", "--time-sample", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    (report,) = data["classifiers"]
    assert report["n"] == len(load_queries("test")) and report["accuracy"] >= 0.85
    assert 0 < report["macro_f1"] <= 1 and sum(map(sum, report["confusion"])) == report["n"]
    assert report["overhead_ms"]["n"] == report["n"] and report["overhead_ms"]["p95"] > 0
    assert data["tier_share"] == {"default": 1.0}


def test_route_explain_and_ask_through_stand_in_tiers(start_standin):
    server = tier_server(start_standin, {"small": "", "large": "A complete answer."})
    env = {
        "LMGAUGE_OLLAMA_HOST": server.url,
        "LMGAUGE_ROUTING__TIERS": json.dumps({"small": "ollama:small", "large": "ollama:large"}),
    }
    explained = lmgauge("route", "explain", "hi there", "--json", env_extra=env)
    assert explained.returncode == 0, explained.stderr
    assert json.loads(explained.stdout)["tier"] == "small"
    asked = lmgauge("route", "ask", "hi there", "--json", env_extra=env)
    assert asked.returncode == 0, asked.stderr
    data = json.loads(asked.stdout)
    assert data["content"] == "A complete answer."
    assert [(a["tier"], a["reason"]) for a in data["attempts"]] == [("small", "empty answer"), ("large", None)]


def test_route_errors_are_one_line():
    proc = lmgauge("route", "explain", "hi", "--tier", "nonsense")
    assert proc.returncode == 1 and "NAME=MODEL" in proc.stderr and "Traceback" not in proc.stderr
