"""Long-term memory: what the user told us, kept beyond the context window.

Two kinds of records, both in the lmgauge SQLite store (WAL: concurrent writers wait for each
other, a killed writer loses at most its own uncommitted transaction):

- **memories**: canonical slots (subject, attribute, value, kind, source turn, time, confidence):
  "user / home city: Oslo". Extracted from each user message by the model under a JSON schema
  (a grammar on the embedded engine, `format` on Ollama) whose attribute is an enum of canonical
  keys (slots.py), with an operation per fact: add, update or delete. What an operation does is
  decided against the slot index, not by the model: a single-valued slot's new value
  *supersedes* the current one (the old row stays, as history, with `superseded_by`); a
  multi-valued slot (hobbies, allergies) appends, and replaces only a value the message names;
  delete *retracts* ("I no longer have a cat"); the same value again is *merged*. Facts about
  someone else ("my friend lives in Oslo") have their own subject and never touch the user's.
- **turns**: the user's messages verbatim, archived as the conversation goes. Compaction may drop
  a turn from the prompt, but never from here; recall searches it. This is what makes recall
  independent of how good the model is at extraction (a 135M model is not good at it).

Recall is hybrid search (BM25 + embeddings, fused by RRF: search.py) over current memories and
archived turns, packed into a token budget. Superseded, retracted and forgotten memories are never
recalled as current, and recall does not contradict memory: an archived message that states a
value since replaced is not recalled (unless it also states a current one: "I moved from Lyon to
Oslo"). Recalled messages come oldest first, labelled by turn; the current memories come last,
nearest the question, where small models weigh them most (they favour what they read last).
"""

from __future__ import annotations

import builtins  # Memory has a method named list: its signatures say builtins.list
import json
import logging
import re
import sqlite3
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..embedding import Embedder, from_blob, to_blob
from ..errors import InvalidOptionError, LmgaugeError
from ..store import Store
from ..types import Message
from .search import HybridSearch, pack
from .slots import (
    BY_KEY,
    HOBBY,
    NOTE,
    OTHER,
    SUBJECT_USER,
    VOCABULARY,
    Canonicaliser,
    in_passing,
    key_words,
    kind_slots,
    named_in,
    named_slots,
    nearest_slot,
    normalise_key,
    normalise_subject,
    people_in,
    slot_for,
    slot_named_by,
    slot_of_kind,
    spoken_of,
)

if TYPE_CHECKING:
    from ..client import Client
    from .tokens import TokenCounter

log = logging.getLogger("lmgauge.context")

KINDS = ("fact", "preference", "decision")
Kind = Literal["fact", "preference", "decision"]
OPS = ("add", "update", "delete")
# current: recalled; superseded: replaced by `superseded_by`; retracted: the user said it is no
# longer true; forgotten: removed by the user (until purge). Only 'current' is ever recalled.
STATUSES = ("current", "superseded", "retracted", "forgotten")

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS memories (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,                    -- fact | preference | decision
        key TEXT NOT NULL,                     -- what it is about: "home city"
        value TEXT NOT NULL,                   -- its value: "Oslo"
        confidence REAL NOT NULL,              -- 0..1: share of the value found in the source
        status TEXT NOT NULL DEFAULT 'current',-- current | superseded | forgotten
        superseded_by INTEGER REFERENCES memories(id),
        mentions INTEGER NOT NULL DEFAULT 1,   -- times stated (duplicates are merged)
        conversation TEXT,
        source_turn INTEGER,
        source_text TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        embed_model TEXT,                      -- which embedder made `embedding`
        embedding BLOB                         -- float32 vector of "key: value"
    )
    """,
    "CREATE INDEX IF NOT EXISTS memories_status ON memories(status, updated)",
    """
    CREATE TABLE IF NOT EXISTS memory_turns (
        id INTEGER PRIMARY KEY,
        conversation TEXT NOT NULL,
        turn INTEGER NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        ts REAL NOT NULL,
        embed_model TEXT,
        embedding BLOB,
        UNIQUE (conversation, turn, role)
    )
    """,
]

# Columns added after the first release: a database made before gets them (additive migration).
MIGRATION = {
    "subject": "TEXT NOT NULL DEFAULT 'user'",  # whom it is about: user | friend | sister ...
    "ended": "REAL",  # when it stopped being current (superseded or retracted)
    "ended_turn": "INTEGER",  # the turn of the message that replaced or retracted it
    "ended_conversation": "TEXT",  # ... in this conversation
}

# --- what the model is asked for ---------------------------------------------------------------


def extraction_schema(keys: list[str]) -> dict[str, Any]:
    """The JSON schema of an extraction: up to 3 facts, each an operation on a canonical slot.
    `key` is an enum of the slot keys (the vocabulary's and the store's), so the model reuses a
    slot instead of naming it anew; "other" keeps a fact no slot names, as a note."""
    return {
        "type": "object",
        "properties": {
            "memories": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "op": {"type": "string", "enum": list(OPS)},
                        # No maxLength on strings: llama.cpp's grammar for it nests one optional per
                        # character, which made sampling ~20x slower (0.5 vs 10 tok/s measured).
                        # num_predict bounds the output; an answer cut short is invalid JSON: retried.
                        "subject": {"type": "string"},
                        "key": {"type": "string", "enum": keys},
                        "value": {"type": "string"},
                    },
                    "required": ["op", "subject", "key", "value"],
                },
            }
        },
        "required": ["memories"],
    }


EXTRACTION_SCHEMA: dict[str, Any] = extraction_schema([s.key for s in VOCABULARY if s.key != NOTE] + [OTHER])

EXTRACTION_PROMPT = """You extract long-term memories from one message a user wrote.
A memory is a fact (name, city, job, family, pets, car...), a preference (likes, diet, habits) \
or a decision (plans, appointments, choices). For each one give:
- op: "add" for something new, "update" when a new value replaces what was true before (give \
only the new value), "delete" when the user says something is no longer true and nothing replaces it;
- subject: "user" when it is about the user, else who it is about ("friend", "sister", "boss");
- key: the slot, one of the allowed keys ("other" if none fits);
- value: the value in the user's own words (for delete: the value that is no longer true).
Keys: job is the user's profession only (plumber); employer is the company they work for or are with; \
home city is the city they live in, home country only ever a country; \
instrument is a musical instrument they play; hobby is something they do for fun (sports, crafts); \
diet is how they eat (keto, halal); morning drink is what they drink in the morning; car is the \
car they drive; language learning is a language they learn; a dog's or cat's name goes in dog name \
or cat name, other animals in pet.
Examples:
"We moved from Rome to Madrid." -> {"memories": [{"op": "update", "subject": "user", "key": "home city", \
"value": "Madrid"}]}
"I swapped the violin for the flute." -> {"memories": [{"op": "update", "subject": "user", "key": "instrument", \
"value": "flute"}]}
"I've started knitting too." -> {"memories": [{"op": "add", "subject": "user", "key": "hobby", "value": "knitting"}]}
"Let's move the dentist appointment from Saturday to Sunday." -> {"memories": [{"op": "update", "subject": "user", \
"key": "appointment", "value": "Sunday"}]}
"My friend works as a chef." -> {"memories": [{"op": "add", "subject": "friend", "key": "job", "value": "chef"}]}
"I no longer have a hamster." -> {"memories": [{"op": "delete", "subject": "user", "key": "pet", \
"value": "hamster"}]}
A question or small talk has no memories: {"memories": []}."""


# --- records -----------------------------------------------------------------------------------


Action = Literal["new", "merged", "superseded", "appended", "retracted"]  # what remember() did


@dataclass
class MemoryItem:
    id: int
    kind: str
    key: str
    value: str
    confidence: float
    status: str
    mentions: int
    created: float
    updated: float
    conversation: str | None = None
    source_turn: int | None = None
    source_text: str | None = None
    superseded_by: int | None = None
    subject: str = SUBJECT_USER
    ended: float | None = None
    ended_turn: int | None = None
    ended_conversation: str | None = None

    @property
    def text(self) -> str:
        who = "" if self.subject == SUBJECT_USER else f"{self.subject}'s "
        return f"{who}{self.key}: {self.value}"

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> MemoryItem:
        names = cls.__dataclass_fields__
        return cls(**{k: row[k] for k in row.keys() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Remembered:
    """What storing one memory did."""

    item: MemoryItem
    action: Action
    replaced: list[MemoryItem] = field(default_factory=list)  # the rows it superseded or retracted


@dataclass
class Recalled:
    """One line of recalled memory, as it goes into the prompt."""

    source: Literal["memory", "turn"]
    id: int
    text: str
    score: float
    tokens: int
    turn: int | None = None
    note: str = ""  # "(changed from Lyon on turn 40)": a current value's history, when asked for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Extraction:
    """The outcome of extracting memories from one message. `warnings` is never fatal."""

    stored: list[Remembered] = field(default_factory=list)
    proposed: list[dict[str, str]] = field(default_factory=list)  # what the model returned
    rejected: list[dict[str, str]] = field(default_factory=list)  # values not found in the message
    warnings: list[str] = field(default_factory=list)
    attempts: int = 0
    ms: float = 0.0


# --- matching values -----------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")
_VALUE_NOISE = {"my", "the", "a", "an", "current", "users", "user", "s", "of", "is", "new", "old"}
# "I also play the banjo": an addition to a multi-valued slot, not a replacement of the values named.
_ALSO = re.compile(r"\b(also|too|as well|in addition|another)\b", re.I)
# Words that say a value changed: a message with one of them and a current value is an update,
# whatever operation the model chose ("I've switched from oat latte to hot chocolate" as "add").
_CHANGE = re.compile(
    r"\b(not|no longer|no more|anymore|any more|instead|now|these days|switched|swapped|traded|"
    r"move|moved|relocated|changed|gave up|given up|quit|left|resigned|dropped|sold|replaced|"
    r"stopped|used to|went from|away from|got rid|rehomed|retrained|became|become)\b",
    re.I,
)


def _supports_change(key: str, text: str | None, current: list[MemoryItem]) -> bool:
    """Does the message back replacing the slot's current value: does it name the slot ("my new
    job"), or name the value it replaces and say that something changed ("no longer a baker")?
    Words of change alone do not ("I gave up the ukulele; I play the piano now", filed as job by a
    0.5B extractor, would replace the job), nor does naming the value alone ("Nala chewed my
    slippers again", filed as the dog's name). Without a message (an API caller's `remember`)
    the caller decides: yes."""
    if text is None:
        return True
    return named_in(key, text) or (_states_change(text) and any(mentions(text, m.value) for m in current))


def _states_change(text: str) -> bool:
    return bool(_CHANGE.search(text))


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def same_value(a: str, b: str) -> bool:
    wa, wb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    if not wa or not wb:
        return a.strip().lower() == b.strip().lower()
    return wa <= wb or wb <= wa


def mentions(text: str, value: str) -> bool:
    """Every word of `value` occurs in `text` as a whole word (case-insensitive)."""
    words = _WORD.findall(value.lower())
    return bool(words) and all(re.search(rf"\b{re.escape(w)}\b", text.lower()) for w in words)


def grounding(value: str, source: str) -> float:
    """Share of the value's words that occur in the message it was extracted from. Small models
    invent values (or copy the prompt's examples); a value the user never wrote is rejected."""
    words = [w for w in _WORD.findall(value.lower()) if w not in _VALUE_NOISE]
    letters = sum(ch.isalnum() or ch.isspace() for ch in value)
    if not words or letters < 0.8 * len(value):  # mostly punctuation: a broken generation
        return 0.0
    said = set(_WORD.findall(source.lower()))
    said |= {_stem(w) for w in said}
    return sum(1 for w in words if w in said or _stem(w) in said) / len(words)


# --- the store ---------------------------------------------------------------------------------


class Memory:
    """Memories and archived turns in one Store, with hybrid recall."""

    def __init__(
        self, store: Store, embedder: Embedder | None = None, min_grounding: float = 0.75, history_notes: bool = True
    ):
        self.store = store
        self.embedder = embedder
        self.min_grounding = min_grounding
        # Recalled memory lines with history say "(changed from X on turn N)" (see recall).
        self.history_notes = history_notes
        self.slots = Canonicaliser(embedder)
        store.ensure(SCHEMA)
        store.add_columns("memories", MIGRATION)

    # --- writing ---------------------------------------------------------------------------------
    def _vector(self, text: str) -> tuple[str | None, bytes | None]:
        if self.embedder is None:
            return None, None
        return self.embedder.name, to_blob(self.embedder.embed([text])[0])

    def keys(self, subject: str | None = None) -> list[str]:
        """The slot keys in use (current memories), for `subject` or everyone."""
        sql, args = "SELECT DISTINCT key FROM memories WHERE status = 'current'", []
        if subject is not None:
            sql += " AND subject = ?"
            args.append(subject)
        with self.store.connect() as db:
            return sorted(r[0] for r in db.execute(sql, args))

    def canonical_key(self, key: str, subject: str = SUBJECT_USER) -> str:
        return self.slots.canonical(key, self.keys(subject))

    def remember(
        self,
        kind: str | None,
        key: str,
        value: str,
        *,
        op: str = "add",
        subject: str | None = SUBJECT_USER,
        confidence: float = 1.0,
        conversation: str | None = None,
        source_turn: int | None = None,
        source_text: str | None = None,
    ) -> Remembered:
        """Apply one operation to a canonical slot (see the module docstring): merged into a
        current memory with the same value; superseding the slot's current value (single-valued)
        or the values the message names (multi-valued); appended; or, for op "delete", the
        matching current value retracted. `kind` None takes the slot's kind."""
        op = op.strip().lower()
        if op not in OPS:
            raise InvalidOptionError(f"memory operation must be one of {', '.join(OPS)}, not {op!r}")
        subject, key = attribute_of(normalise_subject(subject), key)
        key, value = self.canonical_key(key, subject), value.strip()
        if key == OTHER:
            key = NOTE
        slot = slot_for(key)
        kind = (kind or slot.kind).strip().lower()
        if kind not in KINDS:
            raise InvalidOptionError(f"memory kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if not key or not value:
            raise InvalidOptionError("a memory needs a non-empty key and value")
        now = time.time()
        with self.store.connect() as db:
            # IMMEDIATE: take the write lock before reading, so two writers cannot both decide
            # that a key is new (or both supersede the same row).
            db.execute("BEGIN IMMEDIATE")
            held = [
                MemoryItem.from_row(r)
                for r in db.execute("SELECT * FROM memories WHERE status = 'current' AND subject = ?", (subject,))
            ]
            current = [m for m in held if m.key == key]
            same = [m for m in current if same_value(m.value, value)]
            if (
                op != "delete"
                and not slot.multi
                and current
                and not same
                and not _supports_change(key, source_text, current)
            ):
                # It would replace the slot's value, and the message neither names the slot nor
                # says that value changed: small extractors misfile ("I'm vegetarian" filed as job
                # replaced the job). The fact is kept as a note (recalled like any memory), the
                # slot as it was.
                key, slot = NOTE, slot_for(NOTE)
                current = [m for m in held if m.key == key]
                same = [m for m in current if same_value(m.value, value)]
            ended = (now, source_turn, conversation)
            # An update or a retraction names what it replaces ("We relocated from Lyon to Dublin",
            # "I sold my Volvo"): a current value the message states is replaced even when the model
            # filed it under another slot (small extractors misfile; the store decides, not them).
            # The message's words decide, not the model's op: a 0.5B extractor calls "Nala chewed
            # my slippers again" an update.
            changing = bool(source_text and _states_change(source_text))
            named = (
                [
                    m
                    for m in held
                    if m.key != key
                    and source_text
                    and mentions(source_text, m.value)
                    and not same_value(m.value, value)
                ]
                if changing
                else []
            )
            if op == "delete":
                same += [
                    m
                    for m in held
                    if m.key != key and same_value(m.value, value) and source_text and mentions(source_text, m.value)
                ]
                # "I no longer have a dog" (value "dog"): the value names a slot; its values end.
                named_slot = slot_named_by(value, [m.key for m in held])
                same += [m for m in held if m.key == named_slot and m not in same]
                # Not what this message has just stated: the 1.5B answered "I'm not gluten-free
                # anymore, I'm vegetarian now" with diet: vegetarian and a retraction of "gluten".
                same = [
                    m
                    for m in same
                    if not (source_text and (m.source_text, m.source_turn) == (source_text, source_turn))
                ]
                for m in same:
                    self._end(db, m.id, "retracted", None, ended)
                return Remembered(
                    same[0]
                    if same
                    else MemoryItem(0, kind, key, value, confidence, "retracted", 0, now, now, subject=subject),
                    "retracted",
                    same,
                )
            if same:
                m = same[0]
                db.execute(
                    "UPDATE memories SET mentions = mentions + 1, confidence = MAX(confidence, ?), "
                    "updated = ? WHERE id = ?",
                    (confidence, now, m.id),
                )
                return Remembered(self._get(db, m.id), "merged")
            if slot.multi:
                # A multi-valued slot keeps its values, except those this message replaces: the
                # ones it names ("I gave up the cello; I play the banjo now"), unless it adds.
                # A value named without words of change is mentioned, not replaced ("Nala chewed my
                # slippers again" filed as pet: slippers keeps pet: Nala).
                adding = op == "add" and source_text is not None and _ALSO.search(source_text)
                replaced = (
                    []
                    if adding or not source_text or not _states_change(source_text)
                    else [m for m in current if mentions(source_text, m.value)]
                )
            else:
                replaced = list(current)
            replaced += [m for m in named if m not in replaced]
            embed_model, vector = self._vector(f"{key}: {value}")
            new_id = db.execute(
                "INSERT INTO memories (kind, key, value, confidence, conversation, source_turn, source_text, "
                "created, updated, embed_model, embedding, subject) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    key,
                    value,
                    confidence,
                    conversation,
                    source_turn,
                    source_text,
                    now,
                    now,
                    embed_model,
                    vector,
                    subject,
                ),
            ).lastrowid
            assert new_id is not None  # set by every INSERT
            for m in replaced:
                self._end(db, m.id, "superseded", new_id, ended)
            item = self._get(db, new_id)
        action: Action = "superseded" if replaced else ("appended" if current else "new")
        return Remembered(item, action, replaced=replaced)

    @staticmethod
    def _end(
        db: sqlite3.Connection, memory_id: int, status: str, by: int | None, ended: tuple[float, int | None, str | None]
    ) -> None:
        db.execute(
            "UPDATE memories SET status = ?, superseded_by = ?, updated = ?, ended = ?, ended_turn = ?, "
            "ended_conversation = ? WHERE id = ?",
            (status, by, ended[0], *ended, memory_id),
        )

    def edit(
        self, memory_id: int, *, key: str | None = None, value: str | None = None, kind: str | None = None
    ) -> MemoryItem:
        """Correct a memory in place (a person's edit is not a new statement: no supersession)."""
        item = self.get(memory_id)
        kind = (kind or item.kind).strip().lower()
        if kind not in KINDS:
            raise InvalidOptionError(f"memory kind must be one of {', '.join(KINDS)}, not {kind!r}")
        key = self.canonical_key(key, item.subject) if key is not None else item.key
        value = value.strip() if value is not None else item.value
        if not key or not value:
            raise InvalidOptionError("a memory needs a non-empty key and value")
        embed_model, vector = self._vector(f"{key}: {value}")
        with self.store.connect() as db:
            db.execute(
                "UPDATE memories SET kind = ?, key = ?, value = ?, confidence = 1.0, updated = ?, "
                "embed_model = ?, embedding = ? WHERE id = ?",
                (kind, key, value, time.time(), embed_model, vector, memory_id),
            )
            return self._get(db, memory_id)

    def forget(self, memory_id: int) -> MemoryItem:
        """Never recalled again; the row stays (status 'forgotten') until `purge`."""
        self.get(memory_id)
        with self.store.connect() as db:
            db.execute("UPDATE memories SET status = 'forgotten', updated = ? WHERE id = ?", (time.time(), memory_id))
            return self._get(db, memory_id)

    def purge(self) -> int:
        """Delete forgotten memories for good (and everything, with their history)."""
        with self.store.connect() as db:
            return db.execute("DELETE FROM memories WHERE status = 'forgotten'").rowcount

    def archive_turn(self, conversation: str, turn: int, role: str, content: str) -> None:
        """Keep a message verbatim (idempotent per conversation, turn and role)."""
        embed_model, vector = self._vector(content) if role == "user" else (None, None)
        with self.store.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO memory_turns (conversation, turn, role, content, ts, embed_model, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation, turn, role, content, time.time(), embed_model, vector),
            )

    # --- reading ---------------------------------------------------------------------------------
    def _get(self, db: sqlite3.Connection, memory_id: int) -> MemoryItem:
        row = db.execute("SELECT * FROM memories WHERE id = ?", (memory_id,)).fetchone()
        if row is None:
            raise InvalidOptionError(f"no memory with id {memory_id} (see `lmgauge memory list --all`)")
        return MemoryItem.from_row(row)

    def get(self, memory_id: int) -> MemoryItem:
        with self.store.connect() as db:
            return self._get(db, memory_id)

    def list(
        self, status: str | None = "current", kind: str | None = None, subject: str | None = None
    ) -> list[MemoryItem]:
        """Memories newest first; status None lists all (history included)."""
        where, args = [], []
        for column, wanted in (("status", status), ("kind", kind), ("subject", subject)):
            if wanted is not None:
                where.append(f"{column} = ?")
                args.append(wanted)
        sql = "SELECT * FROM memories" + (" WHERE " + " AND ".join(where) if where else "")
        with self.store.connect() as db:
            rows = db.execute(sql + " ORDER BY updated DESC, id DESC", args).fetchall()
        return [MemoryItem.from_row(r) for r in rows]

    def current(self, subject: str | None = None) -> builtins.list[MemoryItem]:
        return self.list("current", subject=subject)

    def ended(self) -> builtins.list[MemoryItem]:
        """Memories that are no longer true (superseded or retracted), oldest change first."""
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT * FROM memories WHERE status IN ('superseded', 'retracted') ORDER BY ended, id"
            ).fetchall()
        return [MemoryItem.from_row(r) for r in rows]

    @staticmethod
    def _values_now(
        chosen: builtins.list[Recalled],
        theirs: builtins.list[MemoryItem],
        replaced: dict[int, builtins.list[MemoryItem]],
        ids: set[int],
        counter: TokenCounter,
    ) -> builtins.list[Recalled]:
        """A recalled message that changed a value brings the value as it is now. With "The
        project review moved to Wednesday; Friday didn't work for the team." recalled and
        "project review day: Wednesday" only in the system prompt (pinned by a compaction), the
        0.5B answered "Friday": it reads the value named last, nearest the question (tuning seeds,
        oracle memories: 2 stale answers of 111). The current value is listed under "What is true
        now", below the message, without a change note: the message beside it tells the change,
        and a note would name the old value once more."""
        said = [c.text for c in chosen if c.source == "turn" and _states_change(c.text)]
        out = []
        for m in theirs:
            if m.id not in ids and replaced.get(m.id) and any(mentions(text, m.value) for text in said):
                item = Recalled("memory", m.id, m.text, 0.0, 0, m.source_turn)
                item.tokens = counter.count_text(format_recalled(item) + "\n")
                out.append(item)
        return out

    def history_note(self, item: MemoryItem, replaced: builtins.list[MemoryItem]) -> str:
        """ "(changed from Lyon on turn 40)" for a current value that replaced others."""
        if not replaced:
            return ""
        olds = ", ".join(m.value for m in replaced)
        when = f" on turn {item.source_turn}" if item.source_turn is not None else ""
        return f"(changed from {olds}{when})"

    def turns(self, conversation: str, role: str | None = "user") -> builtins.list[tuple[int, int, str]]:
        """(row id, turn, content) of a conversation's archived messages, oldest first."""
        sql = "SELECT id, turn, content FROM memory_turns WHERE conversation = ?"
        args: list[Any] = [conversation]
        if role:
            sql += " AND role = ?"
            args.append(role)
        with self.store.connect() as db:
            return [(r[0], r[1], r[2]) for r in db.execute(sql + " ORDER BY turn, id", args)]

    def _vectors(self, table: str, ids: builtins.list[int], texts: builtins.list[str]) -> np.ndarray | None:
        """Stored vectors for these rows, (re)computing any made by another embedder."""
        if self.embedder is None or not ids:
            return None
        marks = ",".join("?" * len(ids))
        with self.store.connect() as db:
            rows = {
                r[0]: (r[1], r[2])
                for r in db.execute(f"SELECT id, embed_model, embedding FROM {table} WHERE id IN ({marks})", ids)
            }
        missing = [
            i
            for i, row_id in enumerate(ids)
            if rows.get(row_id, (None, None))[0] != self.embedder.name or rows[row_id][1] is None
        ]
        if missing:
            fresh = self.embedder.embed([texts[i] for i in missing])
            with self.store.connect() as db:
                db.executemany(
                    f"UPDATE {table} SET embed_model = ?, embedding = ? WHERE id = ?",
                    [(self.embedder.name, to_blob(v), ids[i]) for i, v in zip(missing, fresh, strict=True)],
                )
            for i, v in zip(missing, fresh, strict=True):
                rows[ids[i]] = (self.embedder.name, to_blob(v))
        return np.stack([from_blob(rows[row_id][1]) for row_id in ids])

    def search(
        self, query: str, k: int = 10, mode: str = "hybrid", status: str | None = "current"
    ) -> builtins.list[tuple[MemoryItem, float]]:
        """Memories best matching `query` (current ones unless status is None)."""
        items = self.list(status)
        if not items:
            return []
        index = HybridSearch(
            [m.text for m in items],
            self.embedder,
            self._vectors("memories", [m.id for m in items], [m.text for m in items]),
        )
        return [(items[i], score) for i, score in index.search(query, k, mode)]  # type: ignore[arg-type]

    def _ended_values(self) -> builtins.list[tuple[MemoryItem, builtins.list[str]]]:
        """The user's replaced or retracted values, each with its slot's current values (other
        than itself): what a statement must not say alone to be current."""
        ended = [m for m in self.ended() if m.subject == SUBJECT_USER]
        if not ended:
            return []
        current_by_key: dict[str, builtins.list[str]] = {}
        for m in self.current(SUBJECT_USER):
            current_by_key.setdefault(m.key, []).append(m.value)
        return [(m, [v for v in current_by_key.get(m.key, []) if not same_value(v, m.value)]) for m in ended]

    @staticmethod
    def _states_ended(text: str, m: MemoryItem, current: builtins.list[str]) -> bool:
        """`text` states the ended value `m` and none of its slot's current values ("I live in
        Lyon", not "I moved from Lyon to Dublin")."""
        return mentions(text, m.value) and not any(mentions(text, v) for v in current)

    def outdated_turns(self, conversation: str, turns: builtins.list[tuple[int, str]]) -> set[int]:
        """Of the (turn number, text) pairs, the turns that state a value a later message
        replaced or retracted, and none of the slot's current values: recalling them would
        contradict memory ("I live in Lyon" after "We moved to Dublin"). A turn is 'before' the
        change by its number within the conversation that made the change; for a change made in
        another conversation, every turn archived before the change's time."""
        ended = self._ended_values()
        if not ended:
            return set()
        with self.store.connect() as db:
            ts = {
                r[0]: r[1]
                for r in db.execute(
                    "SELECT turn, ts FROM memory_turns WHERE conversation = ? AND role = 'user'", (conversation,)
                )
            }
        out: set[int] = set()
        for turn, text in turns:
            for m, current in ended:
                if m.ended_conversation == conversation and m.ended_turn is not None:
                    before = turn < m.ended_turn
                else:
                    before = m.ended is not None and ts.get(turn, 0.0) < m.ended
                if before and self._states_ended(text, m, current):
                    out.add(turn)
                    break
        return out

    def without_outdated(self, text: str) -> str:
        """`text` (a summary of the conversation so far) without its sentences that state a
        value since replaced or retracted. A summary made before a change, or by a model that
        kept the first of two values, says "Let's hold the project review on Tuesday" next to
        the memory's "project review day: Wednesday", and the 1.5B answered "Tuesday" from it
        (test seed 1, oracle memories)."""
        ended = self._ended_values()
        if not ended:
            return text
        lines = []
        for line in text.splitlines():  # line by line, so that what is kept keeps its layout
            indent = line[: len(line) - len(line.lstrip())]
            sentences = re.split(r"(?<=[.!?])\s+", line.strip())
            kept = [s for s in sentences if not any(self._states_ended(s, m, current) for m, current in ended)]
            if kept or not line.strip():
                lines.append(indent + " ".join(kept))
        return "\n".join(lines).strip()

    def recall(
        self,
        query: str,
        counter: TokenCounter,
        budget: int,
        *,
        conversation: str | None = None,
        exclude_turns: set[int] | None = None,
        exclude_memories: set[int] | None = None,
        mode: str = "hybrid",
    ) -> builtins.list[Recalled]:
        """What to put in the prompt for `query`: current memories and archived user turns of
        this conversation (minus those already in the prompt, and those that state a value
        since replaced), ranked together by hybrid search and packed into `budget` tokens.
        Returned in prompt order: turns oldest first, then memories (the current truth, last,
        nearest the question)."""
        if budget <= 0:
            return []
        candidates: list[Recalled] = []
        vectors: list[np.ndarray] = []
        # Someone else's facts only when the message names them: "friend's home city: Porto"
        # beside the user's city, for "Which city do I live in now?", drew a 0.5B model's answer.
        asked = key_words(query)
        current = self.current()
        theirs = [m for m in current if m.subject == SUBJECT_USER or key_words(m.subject) <= asked]
        items = [m for m in theirs if m.id not in (exclude_memories or set())]
        replaced: dict[int, list[MemoryItem]] = {}
        if theirs:  # what each current value replaced: its note, and _values_now
            for old in self.list("superseded"):
                if old.superseded_by is not None:
                    replaced.setdefault(old.superseded_by, []).append(old)

        def line(m: MemoryItem) -> Recalled:
            return Recalled(
                "memory",
                m.id,
                m.text,
                0.0,
                0,
                m.source_turn,
                note=self.history_note(m, replaced.get(m.id, [])) if self.history_notes else "",
            )

        if items:
            candidates += [line(m) for m in items]
            vec = self._vectors("memories", [m.id for m in items], [m.text for m in items])
            if vec is not None:
                vectors.append(vec)
        if conversation is not None:
            latest: dict[str, tuple[int, int, str]] = {}  # a sentence said twice is recalled once
            for t in self.turns(conversation):
                if t[1] not in (exclude_turns or set()) and not is_question(t[2]):
                    latest[t[2].strip()] = t
            turns = sorted(latest.values(), key=lambda t: t[1])
            outdated = self.outdated_turns(conversation, [(t[1], t[2]) for t in turns])
            turns = [t for t in turns if t[1] not in outdated]
            if turns:
                candidates += [Recalled("turn", row_id, text, 0.0, 0, turn) for row_id, turn, text in turns]
                vec = self._vectors("memory_turns", [t[0] for t in turns], [t[2] for t in turns])
                if vec is not None:
                    vectors.append(vec)
        if not candidates:
            return []
        stacked = np.concatenate(vectors) if self.embedder is not None and vectors else None
        index = HybridSearch([c.text for c in candidates], self.embedder if stacked is not None else None, stacked)
        ranked = []
        for i, score in index.search(query, k=len(candidates), mode=mode):  # type: ignore[arg-type]
            c = candidates[i]
            c.score = score
            c.tokens = counter.count_text(format_recalled(c) + "\n")
            ranked.append(c)
        chosen, _ = pack(ranked, lambda c: c.tokens, budget)
        # A multi-valued slot is recalled whole: its other values, pinned in the system prompt or
        # left out by the budget, join the recalled one (with "allergy: sesame" recalled and
        # "allergy: peanuts" pinned, a 0.5B model named one allergy of two). A few tokens over
        # the budget; the prompt is measured again before it is sent (Conversation._build).
        ids = {c.id for c in chosen if c.source == "memory"}
        whole = {(m.subject, m.key) for m in current if m.id in ids and m.key != NOTE and slot_for(m.key).multi}
        for m in current:
            if (m.subject, m.key) in whole and m.id not in ids:
                chosen.append(line(m))
                chosen[-1].tokens = counter.count_text(format_recalled(chosen[-1]) + "\n")
                ids.add(m.id)
        chosen += self._values_now(chosen, theirs, replaced, ids, counter)
        return sorted(chosen, key=lambda c: (c.source == "memory", c.turn if c.turn is not None else -1))

    def pinned(self, counter: TokenCounter, budget: int) -> builtins.list[MemoryItem]:
        """The memories always kept in a compacted prompt: most mentioned, then most recent."""
        items = sorted(self.current(), key=lambda m: (-m.mentions, -m.updated))
        chosen, _ = pack(items, lambda m: counter.count_text(f"- {m.text}\n"), budget)
        return chosen


def attribute_of(subject: str, key: str) -> tuple[str, str]:
    """Models often write a relation as the subject of a name ("sister" / "name": "Ingrid") or
    an attribute as the subject ("employer" / "name": "Acme"): both are the user's slots
    ("sister name", "employer"). Facts about the other person ("friend" / "home city") stay theirs."""
    if subject == SUBJECT_USER:
        return subject, key
    if subject in BY_KEY:  # "project review day" / "deadline": the subject is the user's slot
        return SUBJECT_USER, subject
    words = key_words(key)
    if not words or words <= {"name", "other", "note"}:
        for candidate in (f"{subject} name", subject):
            if candidate in BY_KEY:
                return SUBJECT_USER, candidate
    return subject, key


def is_question(text: str) -> bool:
    """A message that is one question and nothing else ("What is a black hole?"). Recall skips
    those: it looks for what the user said, and old questions crowd out the statements (measured
    on the synthetic conversations: the turn with the answer ranked 13th among ~75 with them,
    2nd without). A statement with a question ("I'm vegan, what should I cook?") is kept only
    when it has its own sentence ("I'm vegan. What should I cook?"); extraction still sees it."""
    text = text.strip()
    return text.endswith("?") and re.search(r"[.!?]\s", text[:-1]) is None


def format_recalled(item: Recalled) -> str:
    if item.source == "memory":
        return f"- {item.text}" + (f" {item.note}" if item.note else "")
    return f"- (turn {item.turn}) {item.text}"


def recall_block(items: list[Recalled]) -> str:
    """The recalled lines as a section of the prompt (empty when nothing was recalled): earlier
    messages oldest first, then the current memories, last, nearest the question."""
    turns = [i for i in items if i.source == "turn"]
    memories = [i for i in items if i.source == "memory"]
    lines: list[str] = []
    if turns:
        lines += ["Earlier messages from the user (oldest first):"] + [format_recalled(i) for i in turns]
    if memories:
        entries = []
        for item in memories:
            slot, _, value = item.text.partition(": ")  # "friend's home city: Porto"
            joins = not item.note and not slot.endswith(NOTE)  # a changed value keeps its own line
            entries.append((slot if joins else None, format_recalled(item), value))
        lines += ["What is true now (long-term memory, up to date):"] + one_line_per_slot(entries)
    return "\n".join(lines)


def one_line_per_slot(entries: Sequence[tuple[Hashable | None, str, str]]) -> list[str]:
    """Lines from (slot, line, value) entries, a slot's values on its first line as a list in
    words ("- allergy: peanuts and sesame"; the line ends with its value). As separate lines,
    small models answered with one of them (both Qwen models named one allergy of two); joined
    with "; " the 0.5B still named one of two in 6 of 12 questions on the tuning seeds, with
    "and" in 4 (replayed prompts, the other 99 questions unchanged). A slot of None never joins."""
    lines: list[str] = []
    values: dict[int, list[str]] = {}  # line index -> the slot's values
    slot_line: dict[Hashable, int] = {}
    for slot, line, value in entries:
        if slot is not None and slot in slot_line:
            values[slot_line[slot]].append(value)
            continue
        if slot is not None:
            slot_line[slot] = len(lines)
            values[len(lines)] = [value]
        lines.append(line)
    for i, vals in values.items():
        if len(vals) > 1:
            lines[i] = lines[i].removesuffix(vals[0]) + words_list(vals)
    return lines


def words_list(values: Sequence[str]) -> str:
    """ "peanuts", "peanuts and sesame", "peanuts, sesame and pollen"."""
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def pinned_block(items: list[MemoryItem]) -> str:
    """The pinned memories for the system prompt, a multi-valued slot's values on one line (as in
    recall: with "- allergy: sesame" and "- allergy: peanuts" on two lines, both Qwen models
    answered "Sesame")."""
    if not items:
        return ""
    entries = [
        ((m.subject, m.key) if m.key != NOTE and slot_for(m.key).multi else None, f"- {m.text}", m.value) for m in items
    ]
    return "\n".join(["What you know about the user:", *one_line_per_slot(entries)])


# --- extraction --------------------------------------------------------------------------------


class Extractor:
    """Asks a model for the memories in one user message, under a JSON schema; stores them.

    The model is shown the slots in use, with their current values, and picks a key from an
    enum of the vocabulary's and the store's keys. Invalid JSON (possible on backends without
    grammar support) is retried once with another seed, then the message is skipped with a
    warning: extraction never fails a chat turn."""

    def __init__(self, client: Client, model: str, memory: Memory, options: dict[str, Any] | None = None):
        self.client = client
        self.model = model
        self.memory = memory
        # 3 memories of ~50 characters each take at most ~160 tokens.
        self.options = {"temperature": 0, "seed": 7, "num_predict": 180, **(options or {})}

    def _keys(self) -> list[str]:
        vocab = [s.key for s in VOCABULARY if s.key != NOTE]
        return vocab + [k for k in self.memory.keys() if k not in BY_KEY] + [OTHER]

    def _messages(self, text: str) -> tuple[list[Message], dict[str, Any]]:
        """The prompt lists the allowed keys (the vocabulary's, then the store's own, which change
        least often first, so the engine's prefix cache keeps most of it). Current values are
        not shown: small models copied them into unrelated messages (measured on tuning seeds)."""
        keys = self._keys()
        system = EXTRACTION_PROMPT + "\nAllowed keys: " + ", ".join(keys) + "."
        return [Message("system", system), Message("user", text)], extraction_schema(keys)

    def propose(
        self, text: str, attempts: tuple[int, ...] = (1, 2), rejected: list[dict[str, str]] | None = None
    ) -> tuple[list[dict[str, str]], list[str], int]:
        """The model's proposals for one message, the warnings, and the attempts made. A second
        attempt uses another seed and some temperature; `rejected` (an earlier answer's facts that
        were not kept) are named in the message, so the model does not give them again."""
        warnings: list[str] = []
        messages, schema = self._messages(text)
        if rejected:
            values = ", ".join(dict.fromkeys(json.dumps(p["value"]) for p in rejected))
            note = f"(Not {values}: not a new value the message states.)"
            messages[-1] = Message("user", f"{text}\n{note}")
        for attempt in attempts:
            options = dict(self.options)
            if attempt > 1:
                options["seed"] = int(options.get("seed", 0)) + 1
                options["temperature"] = 0.3
            try:
                result = self.client.chat(self.model, messages, options=options, format=schema)
                return parse_extraction(result.content), warnings, attempt
            except ValueError as exc:
                warnings.append(f"memory extraction attempt {attempt}: invalid output ({exc})")
            except LmgaugeError as exc:  # engine down, overflow: the turn goes on without memories
                warnings.append(f"memory extraction failed: {exc}")
                return [], warnings, attempt
        warnings.append(f"memory extraction skipped for this message after {len(attempts)} invalid answers")
        return [], warnings, attempts[-1]

    def _check(
        self, proposals: list[dict[str, str]], text: str
    ) -> tuple[list[tuple[dict[str, str], float]], list[dict[str, str]]]:
        """The proposals to store (refiled, with their grounding) and those rejected."""
        kept: list[tuple[dict[str, str], float]] = []
        rejected: list[dict[str, str]] = []
        current = self.memory.current()
        for p in refile(proposals, text, self.memory):
            score = grounding(p["value"], text)
            # Someone else's fact needs that someone in the message (a 0.5B model added "friend's
            # job: Bluefin Robotics" to "I left Quarry Bank and joined Bluefin Robotics"); and one
            # value is one fact (the 1.5B gave "I play the ukulele in a local band" as instrument:
            # ukulele and hobby: playing ukulele in a local band).
            if p["subject"] != SUBJECT_USER and grounding(p["subject"], text) < 1:
                score = 0.0
            # "I'm not gluten-free anymore, I'm vegan now" answered as an update to gluten-free: the
            # value being replaced, not the new one (a 0.5B model; it would keep the old value).
            # Any operation but delete: "Bluefin Robotics hired me away from Nordlys Labs" gave
            # employer: Nordlys Labs as an add (the 0.5B, tuning seeds).
            if p["op"] != "delete" and _states_change(text) and _holds(current, p):
                score = 0.0
            # The slot's own name is not its value ("The project review is scheduled for Monday"
            # answered with project review day: "Project Review", the 0.5B on tuning seeds).
            if p["op"] != "delete" and key_words(p["value"]) <= key_words(p["key"]):
                score = 0.0
            if (
                score < self.memory.min_grounding
                or not normalise_key(p["key"])
                or any(q["subject"] == p["subject"] and same_value(q["value"], p["value"]) for q, _ in kept)
            ):
                rejected.append(p)
            else:
                kept.append((p, score))
        return kept, rejected

    def _changed(self, text: str) -> list[MemoryItem]:
        """The user's current values a message names while saying something changed."""
        if not _states_change(text):
            return []
        return [m for m in self.memory.current(SUBJECT_USER) if m.key != NOTE and mentions(text, m.value)]

    def extract(self, text: str, conversation: str | None = None, turn: int | None = None) -> Extraction:
        t0 = time.perf_counter()
        out = Extraction()
        out.proposed, out.warnings, out.attempts = self.propose(text)
        kept, out.rejected = self._check(out.proposed, text)
        changed = self._changed(text)
        if out.attempts == 1 and all(p["op"] == "delete" for p, _ in kept) and (out.rejected or changed):
            # Nothing was kept but retractions, from a message that changes a value the store holds
            # or with facts rejected: ask once more, as for invalid JSON (a 0.5B model gave "Project
            # Review Day 2" for "Let's move the project review from Friday to Tuesday", and "I gave
            # up the ukulele; I play the piano now" as an update to ukulele and a deletion of it,
            # which lost the piano; the 1.5B gave nothing for "Nala passed away last week, so I
            # don't have a dog anymore"). Where the message names a value the store holds, the
            # second request names it by its slot instead (masked); else it says which values
            # were not new.
            if changed:
                # A placeholder given back ("delete dog name: old dog") is checked against the
                # message itself like any value: refile finds the value it stands for.
                again, warnings, tries = self.propose(masked(text, changed))
                out.attempts += tries
            else:
                again, warnings, out.attempts = self.propose(text, attempts=(2,), rejected=out.rejected)
            more, rejected = self._check(again, text)
            kept += [(p, score) for p, score in more if not any(p == q for q, _ in kept)]
            out.proposed += again
            out.rejected += rejected
            out.warnings += warnings
        for p, score in kept:
            out.stored.append(
                self.memory.remember(
                    None,
                    p["key"],
                    p["value"],
                    op=p["op"],
                    subject=p["subject"],
                    confidence=round(score, 3),
                    conversation=conversation,
                    source_turn=turn,
                    source_text=text,
                )
            )
        for w in out.warnings:
            log.warning(w)
        out.ms = (time.perf_counter() - t0) * 1000
        return out


def masked(text: str, changed: list[MemoryItem]) -> str:
    """The message with the old values it names replaced by what they are ("Acme Foods hired me
    away from my old employer."). Asked what changed, the 0.5B answered with the value it already
    knew, on both attempts, even when told not to ("Acme Foods hired me away from Tern Logistics"
    gave employer: Tern Logistics twice, "I resigned from Quarry Bank; I start at Tern Logistics
    next week" only its retraction; tuning seeds); without the old value in the message, it gave
    the new one (4 of 4 such messages, and retractions stayed retractions)."""
    for m in sorted(changed, key=lambda m: -len(m.value)):
        text = re.sub(rf"\b(?:(?:my|the|a|an|our)\s+)?{re.escape(m.value)}\b", f"my old {m.key}", text, flags=re.I)
    return text


def _holds(current: list[MemoryItem], proposal: dict[str, str]) -> bool:
    """Is the proposal's value already its slot's current value?"""
    return any(
        (m.subject, m.key) == (proposal["subject"], proposal["key"]) and same_value(m.value, proposal["value"])
        for m in current
    )


def refile(proposals: list[dict[str, str]], text: str, memory: Memory) -> list[dict[str, str]]:
    """The proposals with each one's slot checked against the message's own words. Small
    extractors misfile (on the tuning seeds a 0.5B model put about one fact in three under another
    slot: "I play the piano now" as job, "I have a dog named Nala" as pet). First the subject is
    checked against the people the message names (whose). Then a proposal whose slot the message
    does not name moves to:
    1. the slot that already holds that value ("It's raining again here in Oslo", filed as home
       country while home city is Oslo), else
    2. when the message says something changed, the slot of the one current value it names and
       replaces ("I sold the Mazda and bought a Subaru", filed as job: the car's slot; "The
       project review moved to Monday; Tuesday didn't work", where "moved to" names a home city
       too), else
    3. from a slot of a kind the lexicon knows (drink, food, city, country, instrument), the slot
       of the value's own kind ("I always start my day with oat latte", filed as favorite food: a
       latte is a drink; slots.slot_of_kind), else
    4. the one slot the message names that no other proposal uses ("play" names instrument, "dog"
       names dog name, "vegan" names diet), or of several the one named nearest the value, else
    5. from hobby, the slot of the value's kind when the whole value is of one ("I've been
       learning the trumpet.": a trumpet is no pastime; "baking bread" stays). Only after the
       message's own words: "Turns out I'm allergic to shellfish as well.", filed as hobby, is an
       allergy, not a favorite food.
    Otherwise the model's slot stands (remember() still guards a single-valued slot's value).
    A retraction of a value the slot does not hold retracts the slot's one value the message
    names."""
    placed = [(*attribute_of(normalise_subject(p["subject"]), p["key"]), p) for p in proposals]
    placed = [(whose(subject, key, text), key, p) for subject, key, p in placed]
    placed = [(subject, memory.canonical_key(key, subject), p) for subject, key, p in placed]
    held_all = memory.current()
    current = [m for m in held_all if m.key != NOTE]
    # A name's own words name no slot: "Acme Foods" names no favorite food, in this message's
    # facts or in a held value (notes too) it mentions ("Nordlys Labs hired me away from Acme Foods");
    # "green tea" is a drink.
    values = [p["value"] for p in proposals] + [m.value for m in held_all if mentions(text, m.value)]
    said = named_slots(text)
    named = [k for k in said if not any(in_passing(k, v, text) for v in values)]
    out = []
    for subject, key, p in placed:
        # A vocabulary slot is named as named_slots decides ("My friend's dog is called Rex" names
        # the dog's name, not the name), another slot by its words.
        if not (key in said if key in BY_KEY else named_in(key, text)):
            held = [m for m in current if m.subject == subject]
            again = {m.key for m in held if same_value(m.value, p["value"])}
            taken = {other for _, other, q in placed if q is not p}
            # "My partner works at Acme" names the partner (the subject) and the employer: the slot
            # is the employer.
            free = [k for k in named if k not in taken and not named_in(k, subject)]
            replaced = {m.key for m in held if mentions(text, m.value) and not same_value(m.value, p["value"])}
            if len(again) == 1:  # the same value, said again ("It's raining here in Oslo")
                key = again.pop()
            elif p["op"] != "delete" and _states_change(text) and len(replaced) == 1:
                key = replaced.pop()
            elif key in kind_slots() and (kind := slot_of_kind(p["value"])) and kind != key and kind not in taken:
                key = kind  # "I always start my day with oat latte", filed as favorite food
            elif len(free) == 1:
                key = free[0]
            elif len(free) > 1 and (nearest := nearest_slot(free, text, p["value"])):
                key = nearest
            elif key == HOBBY and (kind := slot_of_kind(p["value"], whole=True)) and kind not in taken:
                key = kind  # "I've been learning the trumpet.", filed as hobby
        value = p["value"]
        if p["op"] == "delete":  # "I got rid of the Mazda and I'm car-free now" as car: "free"
            in_slot = [m.value for m in current if (m.subject, m.key) == (subject, key)]
            said = [v for v in in_slot if mentions(text, v)]
            if len(said) == 1 and not any(same_value(v, value) for v in in_slot):
                value = said[0]
        out.append({**p, "subject": subject, "key": key, "value": value})
    return out


def whose(subject: str, key: str, text: str) -> str:
    """The subject of a proposed fact, checked against the people the message names. A 0.5B
    extractor gave "My colleague always drinks espresso" as the user's, and "friend" to everyone
    else: "My brother works as a nurse", "I have a sister called Amara"."""
    people = people_in(text)
    if subject == SUBJECT_USER:
        other = spoken_of(text)  # about someone else, and not the user: theirs
        return other if other and not named_in(key, other) else subject
    if key_words(subject) <= key_words(text) or not people:
        return subject  # named in the message, or no one is (the check in _check rejects it)
    # "I have a sister called Amara": the slot is the user's relation (sister name).
    return SUBJECT_USER if any(named_in(key, p) for p in people) else people[0]


def parse_extraction(content: str) -> list[dict[str, str]]:
    """Validate the model's JSON; ValueError (with the reason) when it is not what was asked.
    `op` defaults to add and `subject` to the user (a backend without grammar may omit them)."""
    data = json.loads(content)  # json.JSONDecodeError is a ValueError
    if not isinstance(data, dict) or not isinstance(data.get("memories"), list):
        raise ValueError("expected an object with a 'memories' list")
    out = []
    for entry in data["memories"]:
        if not isinstance(entry, dict):
            raise ValueError("each memory must be an object")
        op, subject = entry.get("op", "add"), entry.get("subject", SUBJECT_USER)
        key, value = entry.get("key"), entry.get("value")
        if op not in OPS or not isinstance(subject, str) or not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"memory {entry!r} needs op in {OPS}, a subject, a key and a value")
        if key.strip() and value.strip():
            out.append({"op": op, "subject": subject.strip(), "key": key.strip(), "value": value.strip()})
    return out
