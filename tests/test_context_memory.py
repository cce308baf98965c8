"""Long-term memory: supersession and merging, recall that never returns a superseded fact,
extraction that survives invalid JSON, and a database that survives concurrent writers and a
writer killed mid-write (real SQLite, real processes)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from lmgauge.client import Client
from lmgauge.context.memory import EXTRACTION_SCHEMA, Extractor, Memory, grounding, parse_extraction
from lmgauge.context.slots import same_slot
from lmgauge.context.tokens import ServerTokens
from lmgauge.embedding import WordLlamaEmbedder
from lmgauge.store import Store
from support.standins import OllamaStandin


@pytest.fixture(scope="module")
def embedder():
    return WordLlamaEmbedder()


@pytest.fixture
def memory(tmp_path, embedder):
    return Memory(Store(tmp_path / "m.db"), embedder)


def test_wordllama_loads_offline_from_its_wheel(embedder):
    vectors = embedder.embed(["I moved to Oslo", "Where do I live?"])
    assert vectors.shape == (2, 256)
    assert abs(float((vectors**2).sum(axis=1)[0]) - 1) < 1e-5


def test_a_new_value_supersedes_the_old_one_which_stays_as_history(memory):
    first = memory.remember("fact", "home city", "Lyon", source_turn=3)
    assert first.action == "new"
    second = memory.remember("fact", "city", "Oslo", source_turn=40)  # "city" is the same slot
    assert second.action == "superseded" and [m.value for m in second.replaced] == ["Lyon"]
    assert [m.value for m in memory.current()] == ["Oslo"]
    history = {m.value: m for m in memory.list(status=None)}
    assert history["Lyon"].status == "superseded" and history["Lyon"].superseded_by == second.item.id
    # Recall never offers the superseded value as current, whatever the query says.
    recalled = memory.recall("Lyon home city", ServerTokens(), budget=500)
    assert [r.text for r in recalled if r.source == "memory"] == ["home city: Oslo"] or [
        r.text for r in recalled if r.source == "memory"
    ] == ["city: Oslo"]
    assert all("Lyon" not in r.text for r in recalled)


def test_duplicates_are_merged(memory):
    memory.remember("fact", "dog name", "Rex", confidence=0.8)
    merged = memory.remember("fact", "dog name", "rex", confidence=1.0)
    assert merged.action == "merged"
    (item,) = memory.current()
    assert item.mentions == 2 and item.confidence == 1.0


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("home city", "city", True),
        ("project review day", "review day", True),
        ("job", "Job", True),
        ("name", "dog name", False),
        ("sister name", "brother name", False),
        ("car", "dog name", False),
    ],
)
def test_slots_match_by_key_words(a, b, same):
    assert same_slot(a, b) is same


def test_values_the_user_never_wrote_are_not_grounded():
    assert grounding("Oslo", "I moved from Lyon to Oslo.") == 1.0
    assert grounding("Sven", "I moved from Lyon to Oslo.") == 0.0
    assert grounding("); Rex; }}, {", "My dog is called Rex.") == 0.0  # a broken generation


def test_edit_forget_and_purge(memory):
    item = memory.remember("preference", "drink", "tea").item
    edited = memory.edit(item.id, value="green tea")
    assert edited.value == "green tea" and memory.current()[0].value == "green tea"
    memory.forget(item.id)
    assert memory.current() == [] and memory.recall("drink", ServerTokens(), 500) == []
    assert memory.purge() == 1 and memory.list(status=None) == []


def test_recall_packs_into_the_budget_and_skips_turns_already_in_the_prompt(memory):
    for turn, text in enumerate(
        [
            "I live in Lyon.",
            "Tell me about tides.",
            "I moved from Lyon to Oslo.",
            "My dog is called Rex.",
            "What is a black hole?",
            "Tell me about tides.",
        ],
        start=1,
    ):
        memory.archive_turn("c1", turn, "user", text)
    counter = ServerTokens()
    everything = memory.recall("Where do I live now?", counter, budget=10_000, conversation="c1")
    # Questions are not what the user told us; a sentence said twice is recalled once (the latest).
    assert [r.turn for r in everything] == [1, 3, 4, 6]  # oldest first
    small = memory.recall("Where do I live now?", counter, budget=70, conversation="c1")
    assert sum(r.tokens for r in small) <= 70 and {r.turn for r in small} == {1, 3}
    without = memory.recall("Where do I live now?", counter, budget=10_000, conversation="c1", exclude_turns={1, 3})
    assert [r.turn for r in without] == [4, 6]


def test_parse_extraction_refuses_what_was_not_asked():
    assert parse_extraction('{"memories": [{"op": "update", "subject": "user", "key": "job", "value": "pilot"}]}') == [
        {"op": "update", "subject": "user", "key": "job", "value": "pilot"}
    ]
    # A backend without grammar may leave out op and subject: an addition about the user.
    assert parse_extraction('{"memories": [{"key": "job", "value": "pilot"}]}') == [
        {"op": "add", "subject": "user", "key": "job", "value": "pilot"}
    ]
    for bad in (
        '{"memories": [',
        '{"facts": []}',
        '{"memories": [{"op": "replace", "key": "a", "value": "b"}]}',
        '{"memories": [{"op": "add", "subject": 3, "key": "a", "value": "b"}]}',
    ):
        with pytest.raises(ValueError):
            parse_extraction(bad)


class RawOllama(OllamaStandin):
    """An Ollama-like server without grammar support: answers its reply even when a format is set."""

    def answer(self, body, max_tokens, stop, fmt=None):
        return super().answer(body, max_tokens, stop, None)


def _client(settings, url):
    return Client(settings.model_copy(update={"ollama_host": url}))


@contextmanager
def _scripted(settings, tmp_path, answers, then):
    """An extractor whose model answers `answers` in turn, then always `then` (a stand-in Ollama)."""
    replies = iter(answers)
    with RawOllama(reply=lambda body: next(replies, then)) as server, _client(settings, server.url) as client:
        yield server, Extractor(client, "ollama:standin", Memory(Store(tmp_path / "m.db")))


def test_extraction_sends_the_schema_and_stores_grounded_facts(settings, tmp_path):
    reply = (
        '{"memories": [{"op": "update", "subject": "user", "key": "home city", "value": "Oslo"}, '
        '{"op": "add", "subject": "user", "key": "job", "value": "astronaut"}]}'
    )
    with RawOllama(reply=reply) as server, _client(settings, server.url) as client:
        memory = Memory(Store(tmp_path / "m.db"))
        out = Extractor(client, "ollama:standin", memory).extract(
            "I moved from Lyon to Oslo.", conversation="c", turn=7
        )
        # Constrained by the server: the slot is an enum of the vocabulary's keys (none stored yet).
        assert server.requests[-1].body["format"] == EXTRACTION_SCHEMA
    assert [(r.action, r.item.text, r.item.source_turn) for r in out.stored] == [("new", "home city: Oslo", 7)]
    assert out.rejected == [{"op": "add", "subject": "user", "key": "job", "value": "astronaut"}]  # never said
    assert out.warnings == [] and out.attempts == 1


def test_invalid_json_is_retried_once_then_skipped_with_a_warning(settings, tmp_path):
    answers = [
        '{"memories": [{"op": "add", "key": "dog',
        '{"memories": [{"op": "add", "subject": "user", "key": "dog name", "value": "Rex"}]}',
    ]
    with _scripted(settings, tmp_path, answers, then="not json at all") as (server, extractor):
        ok = extractor.extract("My dog is called Rex.")
        assert ok.attempts == 2 and [r.item.text for r in ok.stored] == ["dog name: Rex"]
        assert len(ok.warnings) == 1 and "invalid output" in ok.warnings[0]
        skipped = extractor.extract("My cat is called Tom.")  # two invalid answers in a row
        assert skipped.attempts == 2 and skipped.stored == []
        assert "skipped" in skipped.warnings[-1]
        assert len(server.requests) == 4


def test_a_fact_about_someone_the_message_never_names_is_rejected(settings, tmp_path):
    """Qwen2.5 0.5B added "friend / job: Bluefin Robotics" to "I left Quarry Bank and joined
    Bluefin Robotics": no friend in the message, so not stored; the user's fact is."""
    reply = (
        '{"memories": [{"op": "update", "subject": "user", "key": "employer", "value": "Bluefin Robotics"}, '
        '{"op": "add", "subject": "friend", "key": "job", "value": "Bluefin Robotics"}]}'
    )
    with RawOllama(reply=reply) as server, _client(settings, server.url) as client:
        out = Extractor(client, "ollama:standin", Memory(Store(tmp_path / "m.db"))).extract(
            "I left Quarry Bank and joined Bluefin Robotics."
        )
    assert [(r.item.subject, r.item.text) for r in out.stored] == [("user", "employer: Bluefin Robotics")]
    assert [p["subject"] for p in out.rejected] == ["friend"]


def test_an_answer_whose_facts_are_all_rejected_is_asked_once_more(settings, tmp_path):
    """Qwen2.5 0.5B answered "Let's move the project review from Friday to Tuesday" with the value
    "Project Review Day 2": never said, rejected, and the update was lost. Nothing grounded: one
    more attempt (another seed, some temperature), as for invalid JSON; a good answer is not
    asked twice."""
    answers = [
        '{"memories": [{"op": "update", "subject": "user", "key": "project name", "value": "Review Day 2"}]}',
        '{"memories": [{"op": "update", "subject": "user", "key": "project review day", "value": "Tuesday"}]}',
    ]
    with _scripted(settings, tmp_path, answers, then='{"memories": []}') as (server, extractor):
        out = extractor.extract("Let's move the project review from Friday to Tuesday.")
        assert [r.item.text for r in out.stored] == ["project review day: Tuesday"] and out.attempts == 2
        assert [p["value"] for p in out.rejected] == ["Review Day 2"] and len(out.proposed) == 2
        assert [r.body["options"]["temperature"] for r in server.requests] == [0, 0.3]
        # The second request names what was rejected, so the model does not give it again.
        assert '(Not "Review Day 2"' in server.requests[1].body["messages"][-1]["content"]
        # An answer with nothing to store ("no memories") is not a rejection: one request.
        assert extractor.extract("What a lovely day.").attempts == 1 and len(server.requests) == 3


def test_an_update_to_the_value_it_replaces_is_rejected_and_asked_again(settings, tmp_path):
    """Qwen2.5 0.5B answered "I'm not gluten-free anymore, I'm vegan now" with an update to
    "gluten-free": stored, that would merge into the old value and lose the change."""
    answers = [
        '{"memories": [{"op": "update", "subject": "user", "key": "diet", "value": "gluten-free"}]}',
        '{"memories": [{"op": "update", "subject": "user", "key": "diet", "value": "vegan"}]}',
    ]
    with _scripted(settings, tmp_path, answers, then='{"memories": []}') as (_, extractor):
        extractor.memory.remember(None, "diet", "gluten-free", source_text="I'm gluten-free, just so you know.")
        out = extractor.extract("I'm not gluten-free anymore, I'm vegan now.")
        assert [(r.action, r.item.text) for r in out.stored] == [("superseded", "diet: vegan")]
        assert [p["value"] for p in out.rejected] == ["gluten-free"] and out.attempts == 2
    assert [m.text for m in extractor.memory.current()] == ["diet: vegan"]


def test_a_change_answered_with_only_its_retraction_is_asked_again(settings, tmp_path):
    """Qwen2.5 0.5B answered "I gave up the ukulele; I play the piano now" with an update to
    "ukulele" (rejected: the old value) and a deletion of it: the piano was lost. Kept
    retractions alone do not end the extraction; the second answer's facts join them."""
    answers = [
        '{"memories": [{"op": "update", "subject": "user", "key": "instrument", "value": "ukulele"}, '
        '{"op": "delete", "subject": "user", "key": "instrument", "value": "ukulele"}]}',
        '{"memories": [{"op": "update", "subject": "user", "key": "instrument", "value": "piano"}]}',
        '{"memories": [{"op": "delete", "subject": "user", "key": "instrument", "value": "piano"}]}',
    ]
    with _scripted(settings, tmp_path, answers, then='{"memories": []}') as (server, extractor):
        extractor.memory.remember(None, "instrument", "ukulele", source_text="I've been learning the ukulele.")
        out = extractor.extract("I gave up the ukulele; I play the piano now.")
        assert [r.action for r in out.stored] == ["retracted", "new"] and out.attempts == 2
        assert [m.text for m in extractor.memory.current()] == ["instrument: piano"]
        # A retraction alone is asked again too (it may hide the new value: see the next test);
        # an empty second answer keeps the retraction.
        assert extractor.extract("I no longer play the piano.").attempts == 2 and len(server.requests) == 4
    assert extractor.memory.current() == []


def test_a_change_is_asked_again_without_the_value_it_replaces(settings, tmp_path):
    """Qwen2.5 0.5B answered "No more baker work for me: I'm a architect these days" with only a
    retraction of "baker", and "Acme Foods hired me away from Tern Logistics" with the old
    employer twice, even when told it was not new (tuning seeds). The second request names the
    old value by what it is, so the model cannot answer with it; a retraction of the placeholder
    ("old dog") is checked against the message itself and retracts the value it stands for."""
    answers = [
        '{"memories": [{"op": "delete", "subject": "user", "key": "job", "value": "baker"}]}',
        '{"memories": [{"op": "update", "subject": "user", "key": "job", "value": "architect"}]}',
        '{"memories": []}',
        '{"memories": [{"op": "delete", "subject": "user", "key": "pet", "value": "old dog"}]}',
    ]
    with _scripted(settings, tmp_path, answers, then='{"memories": []}') as (server, extractor):
        extractor.memory.remember(None, "job", "baker", source_text="I earn my living as a baker.")
        out = extractor.extract("No more baker work for me: I'm an architect these days.")
        asked = server.requests[-1].body["messages"][-1]["content"]
        assert asked == "No more my old job work for me: I'm an architect these days."
        assert [(r.action, r.item.text) for r in out.stored] == [("retracted", "job: baker"), ("new", "job: architect")]
        extractor.memory.remember(None, "dog name", "Mochi", source_text="Our dog's name is Mochi.")
        out = extractor.extract("We rehomed Mochi; there's no dog at home now.")
        assert server.requests[-1].body["messages"][-1]["content"].startswith("We rehomed my old dog name;")
        assert [(r.action, r.item.text) for r in out.stored] == [("retracted", "dog name: Mochi")]
    assert [m.text for m in extractor.memory.current()] == ["job: architect"]


def test_a_change_answered_with_nothing_is_asked_again(settings, tmp_path):
    """Qwen2.5 1.5B answered "Nala passed away last week, so I don't have a dog anymore" with no
    memories (tuning seeds): the dog stayed current. A message that says a held value changed,
    answered with nothing, is asked once more; small talk answered with nothing is not."""
    answers = [
        '{"memories": []}',
        '{"memories": [{"op": "delete", "subject": "user", "key": "dog name", "value": "Nala"}]}',
    ]
    with _scripted(settings, tmp_path, answers, then='{"memories": []}') as (server, extractor):
        extractor.memory.remember(None, "dog name", "Nala", source_text="I have a dog named Nala.")
        out = extractor.extract("Nala passed away last week, so I don't have a dog anymore.")
        assert [r.action for r in out.stored] == ["retracted"] and out.attempts == 2
        assert extractor.memory.current() == []
        assert extractor.extract("I think I'll go for a walk now.").attempts == 1 and len(server.requests) == 3


def test_an_old_value_or_the_slot_name_as_a_fact_is_rejected(settings, tmp_path):
    """Qwen2.5 0.5B (tuning seeds) gave "Bluefin Robotics hired me away from Nordlys Labs" as an
    add of the old employer, and "The project review is scheduled for Monday" as project review
    day: "Project Review". Neither is a value the message states; both are asked again."""
    answers = [
        '{"memories": [{"op": "add", "subject": "user", "key": "employer", "value": "Nordlys Labs"}]}',
        '{"memories": [{"op": "update", "subject": "user", "key": "employer", "value": "Bluefin Robotics"}]}',
        '{"memories": [{"op": "add", "subject": "user", "key": "project review day", "value": "Project Review"}]}',
        '{"memories": [{"op": "add", "subject": "user", "key": "project review day", "value": "Monday"}]}',
    ]
    with _scripted(settings, tmp_path, answers, then='{"memories": []}') as (_, extractor):
        extractor.memory.remember(None, "employer", "Nordlys Labs", source_text="I work at Nordlys Labs.")
        out = extractor.extract("Bluefin Robotics hired me away from Nordlys Labs.")
        assert [(r.action, r.item.text) for r in out.stored] == [("superseded", "employer: Bluefin Robotics")]
        assert [p["value"] for p in out.rejected] == ["Nordlys Labs"]
        out = extractor.extract("The project review is scheduled for Monday.")
        assert [r.item.text for r in out.stored] == ["project review day: Monday"]
        assert [p["value"] for p in out.rejected] == ["Project Review"]
    # Saying a held value again without a change is no rejection: it is merged.
    with _scripted(settings, tmp_path / "again", [answers[1]], then='{"memories": []}') as (_, extractor):
        extractor.memory.remember(None, "employer", "Bluefin Robotics", source_text="I work at Bluefin Robotics.")
        out = extractor.extract("Another day at Bluefin Robotics.")
        assert [r.action for r in out.stored] == ["merged"] and out.attempts == 1


def test_an_unreachable_extraction_model_does_not_fail_the_turn(settings, tmp_path, closed_url):
    with _client(settings, closed_url) as client:
        out = Extractor(client, "ollama:standin", Memory(Store(tmp_path / "m.db"))).extract("I live in Oslo.")
    assert out.stored == [] and "failed" in out.warnings[0]


# --- the database under concurrent writers and a kill -------------------------------------------


def _writer(db_path: str, worker: int, n: int) -> None:
    memory = Memory(Store(db_path))
    for i in range(n):
        memory.remember("fact", f"w{worker} item {i}", f"value {i}")
        memory.remember("fact", "shared counter", f"w{worker}s{i}")  # every writer updates one slot
        memory.archive_turn(f"conv{worker}", i, "user", f"message {i}")


def test_concurrent_writers_lose_nothing_and_keep_one_current_value(tmp_path):
    db = str(tmp_path / "m.db")
    Memory(Store(db))
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(db, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    memory = Memory(Store(db))
    everything = memory.list(status=None)
    assert len([m for m in everything if m.key != "shared counter"]) == 100
    shared = [m for m in everything if m.key == "shared counter"]
    assert len(shared) == 100 and len([m for m in shared if m.status == "current"]) == 1
    assert sum(len(memory.turns(f"conv{w}")) for w in range(4)) == 100


KILLED_WRITER = textwrap.dedent("""
    import sys
    from lmgauge.context.memory import Memory
    from lmgauge.store import Store
    memory = Memory(Store(sys.argv[1]))
    i = 0
    while True:
        item = memory.remember("fact", f"key {i}", "x" * 2000 + str(i)).item
        memory.archive_turn("c", i, "user", "y" * 5000)
        print(item.id, flush=True)
        i += 1
""")


def test_a_writer_killed_mid_write_leaves_a_consistent_database(tmp_path):
    db = tmp_path / "m.db"
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, text=True, env=env)
    committed = []
    deadline = time.monotonic() + 60
    while len(committed) < 40 and time.monotonic() < deadline:
        committed.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)  # mid-loop: most likely inside a transaction
    proc.wait(10)
    assert len(committed) >= 40
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    memory = Memory(Store(db))
    ids = {m.id for m in memory.list(status=None)}
    assert set(committed) <= ids  # everything reported committed is there
    assert memory.remember("fact", "after the crash", "works").action == "new"


def test_memory_rows_survive_a_json_round_trip(memory):
    item = memory.remember(
        "decision", "review day", "Friday", conversation="c", source_turn=2, source_text="Let's meet Friday"
    ).item
    data = json.loads(json.dumps(item.to_dict()))
    # "review day" is filed under the canonical slot "project review day" (slots.py).
    assert data["key"] == "project review day" and data["source_turn"] == 2 and Path  # noqa: B018
