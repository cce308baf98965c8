"""Answer repeated questions from a cache instead of a model.

    cache = ResponseCache.from_settings(settings)          # [cache] in the config
    hit = cache.lookup(request)                             # CacheHit or None
    if hit is None:
        result = client.chat(...); cache.store(request, result)

Two ways to hit:

- **exact**: the normalized request (model, messages, options that change the output, format,
  tools) hashes to a stored key. Whitespace runs are collapsed; option order, engine-only options
  (threads, batch size) and keep_alive do not matter.
- **semantic**: the same conversation so far (everything but the last user message must match
  exactly, as must model, options and format) and a last user message whose embedding is close
  enough (cosine >= `similarity`) to a cached one, **and** that passes the guards: both
  questions must carry the same numbers, the same negations and the same named things. Without
  the guards "is X safe" would answer "is X not safe" (similarity ~0.95) and "in 2023" would
  answer "in 2024"; the guards are what make a semantic cache safe to turn on.

Only deterministic requests are cached (temperature 0, or a fixed seed): caching a request that
asks for sampling would freeze one sample. `force=True` caches any request.

Entries expire after `ttl` seconds; beyond `max_entries` the least recently used go first.
Backends: SQLite (the lmgauge store, default) or Redis, shared by several gateway replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .config import CacheSettings, Settings
from .embedding import Embedder, make_embedder
from .errors import InvalidOptionError
from .types import ChatRequest, GenerateRequest, Message, Options, Result, Timings

log = logging.getLogger("lmgauge.cache")

# Options that change how fast an answer comes, not what it says.
NON_SEMANTIC_OPTIONS = frozenset({"num_thread", "num_batch", "num_gpu", "main_gpu", "low_vram", "use_mmap",
                                  "use_mlock", "numa", "f16_kv", "vocab_only", "logits_all"})


# --- keys ---------------------------------------------------------------------------------------


def _squash(text: str) -> str:
    return " ".join(text.split())


def normalized_request(request: ChatRequest, *, without_last_user: bool = False) -> dict[str, Any]:
    """The parts of a request that decide its answer, in a canonical form."""
    messages = list(request.messages)
    if without_last_user and messages and messages[-1].role == "user":
        messages = messages[:-1]
    options = {k: v for k, v in sorted(request.options.to_dict().items()) if k not in NON_SEMANTIC_OPTIONS}
    return {
        "model": request.model,
        "messages": [
            {"role": m.role, "content": _squash(m.content), "tool_calls": m.tool_calls, "tool_name": m.tool_name,
             "images": m.images}
            for m in messages
        ],
        "options": options,
        "format": request.format,
        "tools": request.tools,
        "semantic": without_last_user,
    } | {  # tool choice and thinking change the answer; absent when default, so older keys still match
        name: value for name, value in (("choice", request.tool_choice), ("forced_tool", request.forced_tool),
                                        ("think", request.think))
        if value not in (None, "auto")
    }


def request_key(request: ChatRequest, *, without_last_user: bool = False) -> str:
    canonical = json.dumps(normalized_request(request, without_last_user=without_last_user),
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_deterministic(options: Options) -> bool:
    """Greedy decoding, or sampling with a fixed seed: the same request gives the same answer."""
    return options.temperature == 0 or options.seed is not None


# --- guards ---------------------------------------------------------------------------------------

_CONTRACTIONS = [
    (re.compile(r"\bcan't\b|\bcannot\b"), "can not"), (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"), (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"), (re.compile(r"'m\b"), " am"), (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"), (re.compile(r"'d\b"), " would"),
    (re.compile(r"\b(what|who|where|when|how|it|that|there|here)'s\b"), r"\1 is"),
]
NEGATION_WORDS = frozenset("not no never none nothing nobody nowhere neither nor without".split())
# Antonyms made by a prefix ("unsafe", "illegal", "dislike"): a negation when the other question
# has the bare word.
NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "non-")
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
                     "ninety": 90, "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9,
                     "dozen": 12, "half": 0.5, "twice": 2, "double": 2, "triple": 3})
ORDINALS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split())}
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[a-z][a-z'-]*")
_CAPITALIZED = re.compile(r"\b[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*")
# A quote opens after a space (not inside "what's") and closes before a non-word character.
_QUOTED = re.compile(r"(?:(?<=\s)|^)['\"“‘`]([^'\"”’`]{2,})['\"”’`](?=\W|$)")
# Capitalized at the start of a sentence for grammar, not because they name something.
COMMON_STARTERS = frozenset(
    "a an the what what's whats which who whom whose where when why how is are was were do does did can could "
    "would should will shall may might must i i'm i've i'd you we they he she it my our your please tell give "
    "explain describe show list name write make find help let summarize translate convert compare define "
    "is it in on at for from with by to of and or but if so then there here this that these those any some "
    "hi hello hey thanks thank ok okay yes no not also just".split()
)
PRONOUN_I = frozenset({"i", "i'm", "i've", "i'd", "i'll"})
# Words that carry no topic (for the substitution guard).
STOPWORDS = COMMON_STARTERS | frozenset(
    "be been being am has have had having me mine us them their his her its our ours about into over "
    "under up down out off again further once all each few more most other such only own same than too "
    "very s t don now way ways best good get got use used using like need know tell one someone "
    "something thing things kind type much many long".split()
)


def _normalize(text: str) -> str:
    out = text.lower().replace("’", "'")
    for pattern, repl in _CONTRACTIONS:
        out = pattern.sub(repl, out)
    return out


def numbers_in(text: str) -> list[float]:
    """Every number a question mentions, digits or words (sorted), e.g. "2 to the 10th" -> [2, 10]."""
    values: list[float] = []
    for match in _NUMBER.findall(text):
        try:
            values.append(float(match.replace(",", "")))
        except ValueError:
            continue
    for word in _WORD.findall(_normalize(text)):
        if word in NUMBER_WORDS:
            values.append(float(NUMBER_WORDS[word]))
        elif word in ORDINALS:
            values.append(float(ORDINALS[word]))
    return sorted(values)


def negations_in(text: str, other: str = "") -> int:
    """How many negations a question holds: negation words, n't contractions, and prefix
    antonyms of a word the other question uses bare ("unsafe" when the other says "safe")."""
    words = _WORD.findall(_normalize(text))
    other_words = set(_WORD.findall(_normalize(other)))
    count = sum(1 for w in words if w in NEGATION_WORDS)
    for w in words:
        for prefix in NEGATING_PREFIXES:
            if w.startswith(prefix) and len(w) > len(prefix) + 2 and w[len(prefix):] in other_words:
                count += 1
                break
    return count


def entities_in(text: str) -> set[str]:
    """Named things: capitalized words (not a sentence's ordinary first word), acronyms, words
    with digits or inner capitals (iPhone, GPT4), and quoted phrases; lowercased."""
    found: set[str] = set()
    for sentence in re.split(r"(?<=[.!?])\s+|\n", text.strip()):
        words = re.findall(r"[\w][\w'.+#-]*", sentence)
        for i, word in enumerate(words):
            bare = word.rstrip(".").removesuffix("'s").removesuffix("’s")
            if not bare:
                continue
            inner_caps = any(c.isupper() for c in bare[1:]) and any(c.islower() for c in bare)
            has_digit_and_alpha = any(c.isdigit() for c in bare) and any(c.isalpha() for c in bare)
            capitalized = bare[0].isupper()
            if bare.lower() in PRONOUN_I or (i == 0 and bare.lower() in COMMON_STARTERS and not inner_caps):
                continue
            if capitalized or inner_caps or has_digit_and_alpha:
                found.add(bare.lower())
    for quoted in _QUOTED.findall(text):
        found.add(_squash(quoted.lower()))
    return found


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def guard_mismatch(a: str, b: str, embedder: Embedder | None = None, synonym: float = 0.3) -> str | None:
    """Why question b must not reuse question a's answer, or None when the guards pass.

    1. numbers: the same numbers (2023 vs 2024, 5 km vs 50 km);
    2. negation: the same number of negations (safe / not safe / unsafe);
    3. entities: the same named things (Austria vs Australia, Python vs Java);
    4. swaps (with an embedder): where the two questions are the same word for word except that
       one topic word was replaced by another that is not a near-synonym (word similarity below
       `synonym`), something else is being asked about (salmon -> chicken, rebase -> cherry-pick,
       pandas -> polars): the lowercase named things the capitalization test cannot see."""
    if numbers_in(a) != numbers_in(b):
        return f"numbers differ ({numbers_in(a)} vs {numbers_in(b)})"
    if negations_in(a, b) != negations_in(b, a):
        return "negation differs"
    ea, eb = entities_in(a), entities_in(b)
    if ea != eb:
        return f"named things differ ({sorted(ea ^ eb)})"
    if embedder is not None:
        swapped = word_swap(a, b, embedder, synonym)
        if swapped:
            return f"a topic word was swapped ({swapped})"
    return None


def word_swap(a: str, b: str, embedder: Embedder, synonym: float = 0.3) -> str | None:
    """A one-for-one replacement of a topic word between otherwise aligned questions, when the
    two words are not near-synonyms; None when there is none. Rewordings that move or add words
    are left to the similarity threshold: only a same-place swap is this suspicious."""
    wa, wb = _WORD.findall(_normalize(a)), _WORD.findall(_normalize(b))
    pairs = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes():
        if op != "replace" or i2 - i1 != j2 - j1:
            continue
        for x, y in zip(wa[i1:i2], wb[j1:j2]):
            if _stem(x) != _stem(y) and x not in STOPWORDS and y not in STOPWORDS:
                pairs.append((x, y))
    if not pairs:
        return None
    vectors = embedder.embed([w for pair in pairs for w in pair])
    for n, (x, y) in enumerate(pairs):
        if float(vectors[2 * n] @ vectors[2 * n + 1]) < synonym:
            return f"{x} -> {y}"
        # Spelled almost alike yet different words: ethanol/methanol, not a synonym.
        if difflib.SequenceMatcher(a=x, b=y).ratio() >= 0.8:
            return f"{x} -> {y}"
    return None


# --- entries and backends ------------------------------------------------------------------------


@dataclass
class Entry:
    key: str  # exact key
    context_key: str  # the semantic neighbourhood: everything but the last user message
    model: str
    question: str  # the last user message
    embedding: bytes | None  # float32, unit length; None for requests without a user message
    response: dict[str, Any]
    created: float
    expires: float
    hits: int = 0


@dataclass
class CacheHit:
    result: Result
    kind: str  # "exact" | "semantic"
    similarity: float
    key: str
    question: str  # the cached question that answered


@dataclass
class CacheStats:
    entries: int
    hits: int
    backend: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    """What a semantic lookup needs of a stored entry (its answer is read only if it wins)."""

    key: str
    question: str
    embedding: bytes


class Backend(Protocol):
    name: str

    def get(self, key: str, now: float) -> Entry | None: ...
    def neighbours(self, context_key: str, now: float) -> list[Candidate]: ...
    def put(self, entry: Entry, max_entries: int) -> None: ...
    def touch(self, key: str, now: float) -> None: ...
    def clear(self) -> int: ...
    def stats(self, now: float) -> CacheStats: ...


CACHE_DDL = [
    """
    CREATE TABLE IF NOT EXISTS response_cache (
        key TEXT PRIMARY KEY,
        context_key TEXT NOT NULL,
        model TEXT NOT NULL,
        question TEXT NOT NULL,
        embedding BLOB,                -- float32 unit vector of the question
        response TEXT NOT NULL,        -- JSON: content, done_reason, tool_calls, engine, token counts
        created REAL NOT NULL,
        expires REAL NOT NULL,
        last_used REAL NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX IF NOT EXISTS response_cache_context ON response_cache(context_key)",
    "CREATE INDEX IF NOT EXISTS response_cache_lru ON response_cache(last_used)",
]


class SQLiteBackend:
    """The lmgauge store's `response_cache` table (one file, WAL; good for one machine)."""

    name = "sqlite"

    def __init__(self, store: Any):
        self.store = store
        store.ensure(CACHE_DDL)

    @staticmethod
    def _entry(row: Any) -> Entry:
        return Entry(key=row["key"], context_key=row["context_key"], model=row["model"], question=row["question"],
                     embedding=row["embedding"], response=json.loads(row["response"]), created=row["created"],
                     expires=row["expires"], hits=row["hits"])

    def get(self, key: str, now: float) -> Entry | None:
        with self.store.connect() as db:
            row = db.execute("SELECT * FROM response_cache WHERE key = ? AND expires > ?", (key, now)).fetchone()
        return self._entry(row) if row else None

    def neighbours(self, context_key: str, now: float) -> list[Candidate]:
        with self.store.connect() as db:
            rows = db.execute("SELECT key, question, embedding FROM response_cache WHERE context_key = ? "
                              "AND expires > ? AND embedding IS NOT NULL", (context_key, now)).fetchall()
        return [Candidate(r["key"], r["question"], r["embedding"]) for r in rows]

    def touch(self, key: str, now: float) -> None:
        with self.store.connect() as db:
            db.execute("UPDATE response_cache SET hits = hits + 1, last_used = ? WHERE key = ?", (now, key))

    def put(self, entry: Entry, max_entries: int) -> None:
        with self.store.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO response_cache (key, context_key, model, question, embedding, response,"
                " created, expires, last_used, hits) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (entry.key, entry.context_key, entry.model, entry.question, entry.embedding,
                 json.dumps(entry.response), entry.created, entry.expires, entry.created),
            )
            db.execute("DELETE FROM response_cache WHERE expires <= ?", (entry.created,))
            (count,) = db.execute("SELECT COUNT(*) FROM response_cache").fetchone()
            if count > max_entries:
                db.execute("DELETE FROM response_cache WHERE key IN (SELECT key FROM response_cache "
                           "ORDER BY last_used ASC LIMIT ?)", (count - max_entries,))

    def clear(self) -> int:
        with self.store.connect() as db:
            return db.execute("DELETE FROM response_cache").rowcount

    def stats(self, now: float) -> CacheStats:
        with self.store.connect() as db:
            n, hits = db.execute("SELECT COUNT(*), COALESCE(SUM(hits), 0) FROM response_cache "
                                 "WHERE expires > ?", (now,)).fetchone()
        return CacheStats(entries=n, hits=hits, backend=self.name, details={"path": str(self.store.path)})


class RedisBackend:
    """Redis, for several gateway replicas sharing one cache. Layout (prefix `lmgauge:cache:`):
    `e:<key>` a hash per entry (fields as Entry, expiring by Redis TTL); `c:<context_key>` a set of
    the entry keys in one semantic neighbourhood; `lru` a sorted set key -> last use, for the size
    limit. Similarity is computed here (numpy) over one neighbourhood, so no Redis module is needed."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "lmgauge:cache:"):
        import redis

        self.url = url
        self.prefix = prefix
        self.db = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        try:
            self.db.ping()
        except redis.RedisError as exc:
            raise InvalidOptionError(f"cannot reach the Redis cache at {url} ({exc}); start redis-server "
                                     "or set [cache] backend = \"sqlite\"") from None

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _entry(self, data: dict[bytes, bytes]) -> Entry:
        emb = data.get(b"embedding") or None
        return Entry(key=data[b"key"].decode(), context_key=data[b"context_key"].decode(),
                     model=data[b"model"].decode(), question=data[b"question"].decode(), embedding=emb,
                     response=json.loads(data[b"response"]), created=float(data[b"created"]),
                     expires=float(data[b"expires"]), hits=int(data.get(b"hits", 0)))

    def get(self, key: str, now: float) -> Entry | None:
        data = self.db.hgetall(self._k("e", key))
        if not data or float(data[b"expires"]) <= now:
            return None
        return self._entry(data)

    def neighbours(self, context_key: str, now: float) -> list[Candidate]:
        keys = [k.decode() for k in self.db.smembers(self._k("c", context_key))]
        if not keys:
            return []
        pipe = self.db.pipeline()
        for key in keys:
            pipe.hmget(self._k("e", key), "question", "embedding", "expires")
        out, gone = [], []
        for key, (question, embedding, expires) in zip(keys, pipe.execute()):
            if expires is None or float(expires) <= now:
                gone.append(key)
            elif embedding:
                out.append(Candidate(key, question.decode(), embedding))
        if gone:  # expired by Redis: drop them from the neighbourhood's index too
            self.db.srem(self._k("c", context_key), *gone)
        return out

    def touch(self, key: str, now: float) -> None:
        pipe = self.db.pipeline()
        pipe.hincrby(self._k("e", key), "hits", 1)
        pipe.zadd(self._k("lru"), {key: now})
        pipe.incr(self._k("hits"))
        pipe.execute()

    def put(self, entry: Entry, max_entries: int) -> None:
        ttl_ms = max(int((entry.expires - entry.created) * 1000), 1)
        pipe = self.db.pipeline()
        pipe.hset(self._k("e", entry.key), mapping={
            "key": entry.key, "context_key": entry.context_key, "model": entry.model, "question": entry.question,
            "embedding": entry.embedding or b"", "response": json.dumps(entry.response),
            "created": entry.created, "expires": entry.expires, "hits": 0,
        })
        pipe.pexpire(self._k("e", entry.key), ttl_ms)
        pipe.sadd(self._k("c", entry.context_key), entry.key)
        pipe.pexpire(self._k("c", entry.context_key), ttl_ms)  # renewed by each newer entry
        pipe.zadd(self._k("lru"), {entry.key: entry.created})
        pipe.zcard(self._k("lru"))
        count = pipe.execute()[-1]
        if count > max_entries:
            self._evict(count - max_entries)

    def _evict(self, n: int) -> None:
        for raw in self.db.zrange(self._k("lru"), 0, n - 1):
            key = raw.decode()
            data = self.db.hmget(self._k("e", key), "context_key")
            pipe = self.db.pipeline()
            pipe.delete(self._k("e", key))
            pipe.zrem(self._k("lru"), key)
            if data and data[0]:
                pipe.srem(self._k("c", data[0].decode()), key)
            pipe.execute()

    def clear(self) -> int:
        keys = list(self.db.scan_iter(match=self.prefix + "*", count=1000))
        entries = sum(1 for k in keys if k.decode().startswith(self._k("e", "")))
        for i in range(0, len(keys), 500):
            self.db.delete(*keys[i:i + 500])
        return entries

    def stats(self, now: float) -> CacheStats:
        # Entries that Redis expired stay in the LRU index until evicted; count live ones.
        live = sum(1 for _ in self.db.scan_iter(match=self._k("e", "*"), count=1000))
        hits = int(self.db.get(self._k("hits")) or 0)
        return CacheStats(entries=live, hits=hits, backend=self.name, details={"url": self.url})


# --- the cache --------------------------------------------------------------------------------------


class ResponseCache:
    def __init__(self, backend: Backend, settings: CacheSettings | None = None, embedder: Embedder | None = None):
        self.backend = backend
        self.settings = settings or CacheSettings()
        self._embedder = embedder

    @classmethod
    def from_settings(cls, settings: Settings, store: Any = None, client: Any = None) -> ResponseCache:
        cs = settings.cache
        if cs.backend == "redis":
            backend: Backend = RedisBackend(cs.redis_url)
        else:
            from .store import Store

            backend = SQLiteBackend(store or Store(settings.db_path))
        embedder = make_embedder(cs.embedder, client) if cs.semantic else None
        return cls(backend, cs, embedder)

    @property
    def embedder(self) -> Embedder | None:
        return self._embedder if self.settings.semantic else None

    def cacheable(self, request: ChatRequest, force: bool = False) -> bool:
        return self.settings.enabled and (force or is_deterministic(request.options))

    @staticmethod
    def question(request: ChatRequest) -> str | None:
        if request.messages and request.messages[-1].role == "user":
            return request.messages[-1].content
        return None

    def lookup(self, request: ChatRequest, force: bool = False) -> CacheHit | None:
        """A cached answer for this request, exact or (if enabled) semantic; None on a miss."""
        if not self.cacheable(request, force):
            return None
        now = time.time()
        key = request_key(request)
        entry = self.backend.get(key, now)
        if entry is not None:
            self.backend.touch(key, now)
            return CacheHit(_result(entry, request.model), "exact", 1.0, key, entry.question)
        question = self.question(request)
        if self.embedder is None or question is None:
            return None
        neighbours = self.backend.neighbours(request_key(request, without_last_user=True), now)
        if not neighbours:
            return None
        vector = self.embedder.embed([question])[0]
        bank = np.frombuffer(b"".join(c.embedding for c in neighbours), dtype=np.float32)
        if bank.size != len(neighbours) * vector.size:
            return None  # stored by another embedder (another dimension)
        sims = bank.reshape(len(neighbours), vector.size) @ vector
        for i in np.argsort(-sims):
            if sims[i] < self.settings.similarity:
                break
            candidate = neighbours[int(i)]
            if guard_mismatch(candidate.question, question, self.embedder) is None:
                entry = self.backend.get(candidate.key, now)
                if entry is None:  # expired or evicted a moment ago
                    continue
                self.backend.touch(candidate.key, now)
                return CacheHit(_result(entry, request.model), "semantic", float(sims[i]), candidate.key,
                                candidate.question)
        return None

    def store(self, request: ChatRequest, result: Result, force: bool = False) -> bool:
        """Keep a finished answer; only complete ones (done_reason "stop") of cacheable requests."""
        if not self.cacheable(request, force) or result.done_reason != "stop":
            return False
        question = self.question(request)
        embedding = None
        if self.embedder is not None and question is not None:
            embedding = self.embedder.embed([question])[0].astype(np.float32).tobytes()
        now = time.time()
        t = result.timings
        entry = Entry(
            key=request_key(request), context_key=request_key(request, without_last_user=True),
            model=request.model, question=question or "", embedding=embedding,
            response={"content": result.content, "done_reason": result.done_reason, "tool_calls": result.tool_calls,
                      "thinking": result.thinking, "engine": result.engine, "prompt_tokens": t.prompt_tokens, "output_tokens": t.output_tokens},
            created=now, expires=now + self.settings.ttl,
        )
        self.backend.put(entry, self.settings.max_entries)
        return True

    def clear(self) -> int:
        return self.backend.clear()

    def stats(self) -> CacheStats:
        return self.backend.stats(time.time())


def _result(entry: Entry, model: str) -> Result:
    """A cached answer as a Result: the stored text and token counts; no engine time was spent,
    so the engine clock fields are zero (the caller stamps its own client clock)."""
    r = entry.response
    timings = Timings(prompt_tokens=r.get("prompt_tokens", 0), output_tokens=r.get("output_tokens", 0),
                      prompt_eval_tokens=0, eval_ns=0, prompt_eval_ns=0, total_ns=0)
    return Result(model=model, content=r["content"], done_reason=r.get("done_reason", "stop"), timings=timings,
                  engine="cache", tool_calls=r.get("tool_calls"), thinking=r.get("thinking") or "")


def as_request(model: str, messages: list[Message | dict[str, Any]], options: Any = None, format: Any = None,
               tools: list[dict[str, Any]] | None = None) -> ChatRequest:
    """A ChatRequest from Client-style arguments (the cache's key is built from it)."""
    from .client import as_messages, as_options

    return ChatRequest(model=model, messages=as_messages(messages), options=as_options(options), format=format,
                       tools=tools)


# --- the gateway's cache ----------------------------------------------------------------------------


class GatewayCache:
    """The response cache as the gateway uses it (`[gateway] cache = true`): deterministic chat
    and generate requests (a generate is looked up as the same conversation; raw prompts and
    fill-in-the-middle are not cached). Lookups and stores run in worker threads, so a SQLite or
    Redis round trip and the embedding never stall the event loop; a store does not delay the
    answer's final chunk."""

    def __init__(self, cache: ResponseCache):
        self.cache = cache
        self._pending: set[asyncio.Future[Any]] = set()

    def _request(self, backend: str, request: ChatRequest | GenerateRequest) -> ChatRequest | None:
        """The request as the cache keys it: under the backend that answers (engine kind, server,
        target: the gateway resolves it), never the name the client sent, so an answer fetched
        through one backend is never served for another. A copy: the client's request is not
        changed."""
        if isinstance(request, GenerateRequest):
            if request.raw or request.suffix:
                return None
            request = request.as_chat()
        if not self.cache.cacheable(request):
            return None
        return dataclasses.replace(request, model=backend)

    async def get(self, backend: str, request: ChatRequest | GenerateRequest) -> Result | None:
        chat = self._request(backend, request)
        if chat is None:
            return None
        hit = await asyncio.to_thread(self.cache.lookup, chat)
        return hit.result if hit is not None else None

    def put(self, backend: str, request: ChatRequest | GenerateRequest, result: Result) -> None:
        chat = self._request(backend, request)
        if chat is None:
            return
        stored = asyncio.get_running_loop().run_in_executor(None, self.cache.store, chat, result)
        self._pending.add(stored)
        stored.add_done_callback(self._stored)

    def _stored(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning("response cache: storing an answer failed: %s", future.exception())


def gateway_cache(settings: Settings, client: Any) -> GatewayCache | None:
    """The gateway's hook: a cache when `[gateway] cache = true` (and `[cache] enabled`), else None."""
    if not (settings.gateway.cache and settings.cache.enabled):
        return None
    return GatewayCache(ResponseCache.from_settings(settings, client=client))
