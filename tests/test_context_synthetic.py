"""The evaluation's synthetic conversations: updates, retractions, additions to multi-valued
slots and distractors, each with its ground truth; and the store, fed the true facts (an oracle
extractor), gets every change right, which is what the evaluation's supersession score checks."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from lmgauge.context.evaluation import ExtractionScore, supersession_accuracy
from lmgauge.context.memory import Memory, MemoryItem, Remembered
from lmgauge.context.synthetic import SLOTS, TUNING_PHRASINGS, TUNING_SEEDS, conversation
from lmgauge.store import Store


def test_conversations_hold_every_kind_of_change_with_its_truth():
    kinds = {t.kind for seed in range(5) for t in conversation(seed).turns}
    assert {"state", "update", "retract", "add", "distractor", "question", "filler"} <= kinds
    c = conversation(0)
    assert conversation(0).turns == c.turns  # seeded
    for turn_no, q in c.questions:
        current = c.current_values(turn_no)[q.slot]
        assert q.values == current and not set(q.old) & set(current) and not set(q.others) & set(current)
    for t in c.turns:
        if t.kind == "distractor":
            assert t.facts[0].subject != "user"
        if t.kind == "retract":
            assert t.facts[0].op == "delete" and t.slot not in {q.slot for _, q in c.questions}
    assert 0 not in TUNING_SEEDS  # the reported seeds are not the tuning seeds


def _sentences(field_templates):
    return {t if isinstance(t, str) else t[1] for t in field_templates}


def test_the_tuning_seeds_say_the_facts_in_other_words():
    """A rule fitted to the tuning seeds' sentences must not be fitted to the test's: no template
    is shared, each seed's fact messages come from its own set, and what changes is the same."""
    fields = ("state", "question", "update", "repeat", "retract", "add", "distractor")
    for spec in SLOTS:
        tuning = TUNING_PHRASINGS[spec.key]
        for f in fields:
            assert not _sentences(getattr(spec, f)) & _sentences(tuning.get(f, ())), (spec.key, f)
        for f in ("update", "retract", "add", "distractor"):
            assert bool(getattr(spec, f)) == bool(tuning.get(f)), (spec.key, f)

    def said(seed):
        return {t.user for t in conversation(seed, turns=60).turns if t.kind != "filler"}

    def renders(sentence, templates):
        return any(_matches(sentence, t) for t in templates)

    test_templates = {t for spec in SLOTS for f in fields for t in _sentences(getattr(spec, f))}
    tuning_templates = {t for v in TUNING_PHRASINGS.values() for f in fields for t in _sentences(v.get(f, ()))}
    for seed in (0, 1, 2):
        assert all(renders(s, test_templates) and not renders(s, tuning_templates) for s in said(seed))
    for seed in (1000, 1001, 1002):
        assert all(renders(s, tuning_templates) and not renders(s, test_templates) for s in said(seed))


def _matches(sentence, template):
    pattern = re.escape(template).replace(r"\{v\}", ".+").replace(r"\{old\}", ".+")
    return re.fullmatch(pattern, sentence) is not None


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_store_fed_the_true_facts_gets_every_change_right(tmp_path, seed):
    c = conversation(seed)
    memory = Memory(Store(tmp_path / "m.db"))
    for i, t in enumerate(c.turns, start=1):
        for f in t.facts:
            memory.remember(
                f.kind, f.key, f.value, op=f.op, subject=f.subject, conversation="c", source_turn=i, source_text=t.user
            )
    result = supersession_accuracy(memory, c, upto=len(c.turns))
    assert result["updates"] > 0 and result["accuracy"] == 1.0 and result["old_still_current"] == 0
    assert result["by_kind"]["distractor"]["n"] == result["by_kind"]["distractor"]["correct"]
    held = {(m.key, m.value) for m in memory.current("user")}
    expected = {(k, v) for k, vs in c.current_values(len(c.turns)).items() for v in vs}
    assert held == expected


def test_extraction_is_scored_by_value_and_subject(tmp_path):
    from lmgauge.context.synthetic import Fact

    def stored(subject, key, value):
        return Remembered(MemoryItem(1, "fact", key, value, 1.0, "current", 1, 0, 0, subject=subject), "new")

    score = ExtractionScore()
    truth = [Fact("fact", "home city", "Oslo", "add", "friend")]
    memory = Memory(Store(tmp_path / "m.db"))
    score.add(
        truth, SimpleNamespace(stored=[stored("user", "home city", "Oslo")], proposed=[{"value": "Oslo"}]), memory
    )
    score.add(
        [Fact("fact", "home city", "Lyon")],
        SimpleNamespace(stored=[stored("user", "job", "Lyon")], proposed=[{"value": "Lyon"}]),
        memory,
    )
    s = score.summary()
    # The friend's city filed as the user's is wrong; the user's city under "job" is right but misfiled.
    assert (score.tp, score.fp, score.fn, score.wrong_subject, score.misfiled) == (1, 1, 1, 1, 1)
    assert s["precision"] == 0.5 and s["recall"] == 0.5
