"""Long-term memory: what the user told us, kept beyond the context window.

Two kinds of records, both in the lmgauge SQLite store (WAL: concurrent writers wait for each
other, a killed writer loses at most its own uncommitted transaction):

- **memories**: facts, preferences and decisions ("home city: Oslo"), extracted from each user
  message by the model under a JSON schema (a grammar on the embedded engine, `format` on
  Ollama). Each has its source turn, time and a confidence. A new value for the same key
  *supersedes* the current one (the old row stays, as history, with `superseded_by`); the same
  value again is *merged* (one row, more mentions).
- **turns**: the user's messages verbatim, archived as the conversation goes. Compaction may drop
  a turn from the prompt, but never from here; recall searches it. This is what makes recall
  independent of how good the model is at extraction (a 135M model is not good at it).

Recall is hybrid search (BM25 + embeddings, fused by RRF: search.py) over current memories and
archived turns, packed into a token budget. Superseded and forgotten memories are never recalled
as current.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..embedding import Embedder, from_blob, to_blob
from ..errors import InvalidOptionError, LmgaugeError
from ..store import Store
from ..types import Message
from .search import HybridSearch, pack

if TYPE_CHECKING:
    from ..client import Client
    from .tokens import TokenCounter

log = logging.getLogger("lmgauge.context")

KINDS = ("fact", "preference", "decision")
Kind = Literal["fact", "preference", "decision"]

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

# --- what the model is asked for ---------------------------------------------------------------

EXTRACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "memories": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "enum": list(KINDS)},
                    # No maxLength: llama.cpp's grammar for it nests one optional per character,
                    # which made sampling ~20x slower (0.5 vs 10 tok/s measured). num_predict
                    # bounds the output instead; an answer cut short is invalid JSON: retried.
                    "key": {"type": "string"},
                    "value": {"type": "string"},
                },
                "required": ["kind", "key", "value"],
            },
        }
    },
    "required": ["memories"],
}

EXTRACTION_PROMPT = """You extract long-term memories from one message a user wrote.
A memory is a fact about the user (name, city, job, family, pets, car...), a preference (likes, \
diet, habits) or a decision (plans, appointments, choices).
Answer in JSON: {"memories": [{"kind": ..., "key": ..., "value": ...}]}.
key: the attribute in 1 to 3 lowercase words. value: its current value, in the user's words.
If the message changes something known, use the same key with the new value.
A question or small talk has no memories: {"memories": []}."""


# --- records -----------------------------------------------------------------------------------


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

    @property
    def text(self) -> str:
        return f"{self.key}: {self.value}"

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
    action: Literal["new", "merged", "superseded"]
    replaced: list[MemoryItem] = field(default_factory=list)  # the rows it superseded


@dataclass
class Recalled:
    """One line of recalled memory, as it goes into the prompt."""

    source: Literal["memory", "turn"]
    id: int
    text: str
    score: float
    tokens: int
    turn: int | None = None

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


# --- matching keys and values ------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")
_KEY_NOISE = {"my", "the", "a", "an", "current", "users", "user", "s", "of", "is", "new", "old"}
# Head nouns too generic to identify an attribute alone: "name" is not the same slot as "dog name".
_GENERIC = {"name", "day", "date", "time", "number", "type", "year", "place", "thing"}


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def key_words(key: str) -> frozenset[str]:
    return frozenset(_stem(w) for w in _WORD.findall(key.lower().replace("favourite", "favorite")) if w not in _KEY_NOISE)


def normalise_key(key: str) -> str:
    return " ".join(_WORD.findall(key.lower())) or key.strip().lower()


def same_slot(a: str, b: str) -> bool:
    """Do two keys name the same attribute? Equal, or one's words contained in the other's
    ("city" ~ "home city", "review day" ~ "project review day"), unless the smaller one is only
    generic words ("name" is not "dog name"); "sister name" and "brother name" are different
    slots. Deliberately lexical: embeddings rate those two as close as "city" and "home city"."""
    wa, wb = key_words(a), key_words(b)
    if not wa or not wb:
        return normalise_key(a) == normalise_key(b)
    if wa == wb:
        return True
    small, big = (wa, wb) if len(wa) <= len(wb) else (wb, wa)
    return small <= big and bool(small - _GENERIC)


def same_value(a: str, b: str) -> bool:
    wa, wb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    if not wa or not wb:
        return a.strip().lower() == b.strip().lower()
    return wa <= wb or wb <= wa


def grounding(value: str, source: str) -> float:
    """Share of the value's words that occur in the message it was extracted from. Small models
    invent values (or copy the prompt's examples); a value the user never wrote is rejected."""
    words = [w for w in _WORD.findall(value.lower()) if w not in _KEY_NOISE]
    letters = sum(ch.isalnum() or ch.isspace() for ch in value)
    if not words or letters < 0.8 * len(value):  # mostly punctuation: a broken generation
        return 0.0
    said = set(_WORD.findall(source.lower()))
    said |= {_stem(w) for w in said}
    return sum(1 for w in words if w in said or _stem(w) in said) / len(words)


# --- the store ---------------------------------------------------------------------------------


class Memory:
    """Memories and archived turns in one Store, with hybrid recall."""

    def __init__(self, store: Store, embedder: Embedder | None = None, min_grounding: float = 0.75):
        self.store = store
        self.embedder = embedder
        self.min_grounding = min_grounding
        store.ensure(SCHEMA)

    # --- writing ---------------------------------------------------------------------------------
    def _vector(self, text: str) -> tuple[str | None, bytes | None]:
        if self.embedder is None:
            return None, None
        return self.embedder.name, to_blob(self.embedder.embed([text])[0])

    def remember(
        self,
        kind: str,
        key: str,
        value: str,
        *,
        confidence: float = 1.0,
        conversation: str | None = None,
        source_turn: int | None = None,
        source_text: str | None = None,
    ) -> Remembered:
        """Store one memory: merged into a current one with the same key and value, or
        superseding current ones with the same key and another value, or new."""
        kind, key, value = kind.strip().lower(), normalise_key(key), value.strip()
        if kind not in KINDS:
            raise InvalidOptionError(f"memory kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if not key or not value:
            raise InvalidOptionError("a memory needs a non-empty key and value")
        embed_model, vector = self._vector(f"{key}: {value}")
        now = time.time()
        with self.store.connect() as db:
            # IMMEDIATE: take the write lock before reading, so two writers cannot both decide
            # that a key is new (or both supersede the same row).
            db.execute("BEGIN IMMEDIATE")
            current = [MemoryItem.from_row(r) for r in db.execute("SELECT * FROM memories WHERE status = 'current'")]
            slot = [m for m in current if same_slot(m.key, key)]
            for m in slot:
                if same_value(m.value, value):
                    db.execute(
                        "UPDATE memories SET mentions = mentions + 1, confidence = MAX(confidence, ?), "
                        "updated = ? WHERE id = ?", (confidence, now, m.id),
                    )
                    return Remembered(self._get(db, m.id), "merged")
            new_id = db.execute(
                "INSERT INTO memories (kind, key, value, confidence, conversation, source_turn, source_text, "
                "created, updated, embed_model, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, key, value, confidence, conversation, source_turn, source_text, now, now, embed_model, vector),
            ).lastrowid
            for m in slot:
                db.execute("UPDATE memories SET status = 'superseded', superseded_by = ?, updated = ? WHERE id = ?",
                           (new_id, now, m.id))
            item = self._get(db, new_id)
        return Remembered(item, "superseded" if slot else "new", replaced=slot)

    def edit(self, memory_id: int, *, key: str | None = None, value: str | None = None,
             kind: str | None = None) -> MemoryItem:
        """Correct a memory in place (a person's edit is not a new statement: no supersession)."""
        item = self.get(memory_id)
        kind = (kind or item.kind).strip().lower()
        if kind not in KINDS:
            raise InvalidOptionError(f"memory kind must be one of {', '.join(KINDS)}, not {kind!r}")
        key = normalise_key(key) if key is not None else item.key
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

    def list(self, status: str | None = "current", kind: str | None = None) -> list[MemoryItem]:
        """Memories newest first; status None lists all (history included)."""
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = "SELECT * FROM memories" + (" WHERE " + " AND ".join(where) if where else "")
        with self.store.connect() as db:
            rows = db.execute(sql + " ORDER BY updated DESC, id DESC", args).fetchall()
        return [MemoryItem.from_row(r) for r in rows]

    def current(self) -> list[MemoryItem]:
        return self.list("current")

    def turns(self, conversation: str, role: str | None = "user") -> list[tuple[int, int, str]]:
        """(row id, turn, content) of a conversation's archived messages, oldest first."""
        sql = "SELECT id, turn, content FROM memory_turns WHERE conversation = ?"
        args: list[Any] = [conversation]
        if role:
            sql += " AND role = ?"
            args.append(role)
        with self.store.connect() as db:
            return [(r[0], r[1], r[2]) for r in db.execute(sql + " ORDER BY turn, id", args)]

    def _vectors(self, table: str, ids: list[int], texts: list[str]) -> np.ndarray | None:
        """Stored vectors for these rows, (re)computing any made by another embedder."""
        if self.embedder is None or not ids:
            return None
        marks = ",".join("?" * len(ids))
        with self.store.connect() as db:
            rows = {r[0]: (r[1], r[2]) for r in db.execute(
                f"SELECT id, embed_model, embedding FROM {table} WHERE id IN ({marks})", ids)}
        missing = [i for i, row_id in enumerate(ids)
                   if rows.get(row_id, (None, None))[0] != self.embedder.name or rows[row_id][1] is None]
        if missing:
            fresh = self.embedder.embed([texts[i] for i in missing])
            with self.store.connect() as db:
                db.executemany(f"UPDATE {table} SET embed_model = ?, embedding = ? WHERE id = ?",
                               [(self.embedder.name, to_blob(v), ids[i]) for i, v in zip(missing, fresh)])
            for i, v in zip(missing, fresh):
                rows[ids[i]] = (self.embedder.name, to_blob(v))
        return np.stack([from_blob(rows[row_id][1]) for row_id in ids])

    def search(self, query: str, k: int = 10, mode: str = "hybrid",
               status: str | None = "current") -> list[tuple[MemoryItem, float]]:
        """Memories best matching `query` (current ones unless status is None)."""
        items = self.list(status)
        if not items:
            return []
        index = HybridSearch([m.text for m in items], self.embedder,
                             self._vectors("memories", [m.id for m in items], [m.text for m in items]))
        return [(items[i], score) for i, score in index.search(query, k, mode)]  # type: ignore[arg-type]

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
    ) -> list[Recalled]:
        """What to put in the prompt for `query`: current memories and archived user turns of
        this conversation (minus those already in the prompt), ranked together by hybrid
        search and packed into `budget` tokens. Returned in prompt order: memories, then turns
        oldest first (so a later statement reads as the newer one)."""
        if budget <= 0:
            return []
        candidates: list[Recalled] = []
        vectors: list[np.ndarray] = []
        items = [m for m in self.current() if m.id not in (exclude_memories or set())]
        if items:
            candidates += [Recalled("memory", m.id, m.text, 0.0, 0, m.source_turn) for m in items]
            vec = self._vectors("memories", [m.id for m in items], [m.text for m in items])
            if vec is not None:
                vectors.append(vec)
        if conversation is not None:
            latest: dict[str, tuple[int, int, str]] = {}  # a sentence said twice is recalled once
            for t in self.turns(conversation):
                if t[1] not in (exclude_turns or set()) and not is_question(t[2]):
                    latest[t[2].strip()] = t
            turns = sorted(latest.values(), key=lambda t: t[1])
            if turns:
                candidates += [Recalled("turn", row_id, text, 0.0, 0, turn) for row_id, turn, text in turns]
                vec = self._vectors("memory_turns", [t[0] for t in turns], [t[2] for t in turns])
                if vec is not None:
                    vectors.append(vec)
        if not candidates:
            return []
        stacked = np.concatenate(vectors) if self.embedder is not None else None
        index = HybridSearch([c.text for c in candidates], self.embedder if stacked is not None else None, stacked)
        ranked = []
        for i, score in index.search(query, k=len(candidates), mode=mode):  # type: ignore[arg-type]
            c = candidates[i]
            c.score = score
            c.tokens = counter.count_text(format_recalled(c) + "\n")
            ranked.append(c)
        chosen, _ = pack(ranked, lambda c: c.tokens, budget)
        return sorted(chosen, key=lambda c: (c.source != "memory", c.turn if c.turn is not None else -1))

    def pinned(self, counter: TokenCounter, budget: int) -> list[MemoryItem]:
        """The memories always kept in a compacted prompt: most mentioned, then most recent."""
        items = sorted(self.current(), key=lambda m: (-m.mentions, -m.updated))
        chosen, _ = pack(items, lambda m: counter.count_text(f"- {m.text}\n"), budget)
        return chosen


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
        return f"- {item.text}" + (f" (turn {item.turn})" if item.turn is not None else "")
    return f"- (turn {item.turn}) {item.text}"


def recall_block(items: list[Recalled]) -> str:
    """The recalled lines as a section of the prompt (empty when nothing was recalled)."""
    if not items:
        return ""
    lines = ["From long-term memory (later statements replace earlier ones):"]
    lines += [format_recalled(i) for i in items]
    return "\n".join(lines)


def pinned_block(items: list[MemoryItem]) -> str:
    if not items:
        return ""
    return "\n".join(["What you know about the user:"] + [f"- {m.text}" for m in items])


# --- extraction --------------------------------------------------------------------------------


class Extractor:
    """Asks a model for the memories in one user message, under a JSON schema; stores them.

    Invalid JSON (possible on backends without grammar support) is retried once with another
    seed, then the message is skipped with a warning: extraction never fails a chat turn."""

    def __init__(self, client: Client, model: str, memory: Memory, options: dict[str, Any] | None = None):
        self.client = client
        self.model = model
        self.memory = memory
        # 3 memories of at most 32 + 60 characters take at most ~150 tokens.
        self.options = {"temperature": 0, "seed": 7, "num_predict": 160, **(options or {})}

    def _messages(self, text: str) -> list[Message]:
        known = sorted({m.key for m in self.memory.current()})[:30]
        system = EXTRACTION_PROMPT
        if known:
            system += "\nKnown keys: " + ", ".join(known) + "."
        return [Message("system", system), Message("user", text)]

    def propose(self, text: str) -> tuple[list[dict[str, str]], list[str], int]:
        """The model's proposals for one message, the warnings, and the attempts made."""
        warnings: list[str] = []
        messages = self._messages(text)
        for attempt in (1, 2):
            options = dict(self.options)
            if attempt == 2:
                options["seed"] = int(options.get("seed", 0)) + 1
                options["temperature"] = 0.3
            try:
                result = self.client.chat(self.model, messages, options=options, format=EXTRACTION_SCHEMA)
                return parse_extraction(result.content), warnings, attempt
            except ValueError as exc:
                warnings.append(f"memory extraction attempt {attempt}: invalid output ({exc})")
            except LmgaugeError as exc:  # engine down, overflow: the turn goes on without memories
                warnings.append(f"memory extraction failed: {exc}")
                return [], warnings, attempt
        warnings.append("memory extraction skipped for this message after 2 invalid answers")
        return [], warnings, 2

    def extract(self, text: str, conversation: str | None = None, turn: int | None = None) -> Extraction:
        t0 = time.perf_counter()
        out = Extraction()
        out.proposed, out.warnings, out.attempts = self.propose(text)
        seen: set[tuple[str, str]] = set()
        for p in out.proposed:
            score = grounding(p["value"], text)
            ident = (normalise_key(p["key"]), p["value"].strip().lower())
            if score < self.memory.min_grounding or not ident[0] or ident in seen:
                out.rejected.append(p)
                continue
            seen.add(ident)
            out.stored.append(self.memory.remember(
                p["kind"], p["key"], p["value"], confidence=round(score, 3),
                conversation=conversation, source_turn=turn, source_text=text,
            ))
        for w in out.warnings:
            log.warning(w)
        out.ms = (time.perf_counter() - t0) * 1000
        return out


def parse_extraction(content: str) -> list[dict[str, str]]:
    """Validate the model's JSON; ValueError (with the reason) when it is not what was asked."""
    data = json.loads(content)  # json.JSONDecodeError is a ValueError
    if not isinstance(data, dict) or not isinstance(data.get("memories"), list):
        raise ValueError("expected an object with a 'memories' list")
    out = []
    for entry in data["memories"]:
        if not isinstance(entry, dict):
            raise ValueError("each memory must be an object")
        kind, key, value = entry.get("kind"), entry.get("key"), entry.get("value")
        if kind not in KINDS or not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"memory {entry!r} needs kind in {KINDS}, a key and a value")
        if key.strip() and value.strip():
            out.append({"kind": kind, "key": key.strip(), "value": value.strip()})
    return out
