"""Canonical memory slots: the same attribute is named the same way every time.

Supersession only works if "We relocated from Lyon to Dublin" lands in the slot that holds
"lives in Lyon". Small extractors name attributes differently from one message to the next
("city", "location", "residence", "relocated to"), so keys are canonicalised:

1. a built-in vocabulary of common personal and project attributes (VOCABULARY), each with
   its kind, whether it holds one value or several (hobbies, allergies append; a home city is
   replaced), and the names people and models use for it (aliases);
2. the extractor's schema lists these keys plus the store's own keys as an enum, so the model
   picks a slot rather than inventing a name (a grammar on the embedded engine);
3. any other name (an API caller's, `lmgauge memory edit --key`) is matched to the vocabulary
   and to the keys already stored: by its words (aliases, "city" ~ "home city"), then by
   embedding similarity; a name that matches nothing becomes a new slot.

The vocabulary is general on purpose (about 40 attributes a user typically tells an assistant);
it is not derived from the evaluation's conversations, though those use common attributes that
it covers (see docs/context.md on keeping the test set apart).
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import Stemmer

if TYPE_CHECKING:
    from ..embedding import Embedder

OTHER = "other"  # the enum's escape hatch: a fact no slot names is kept as a note
NOTE = "note"
HOBBY = "hobby"  # the pastimes: a value wholly of a known kind ("the trumpet") is no pastime


@dataclass(frozen=True)
class Slot:
    key: str
    kind: str  # fact | preference | decision
    multi: bool = False  # several current values (append) instead of one (supersede)
    aliases: tuple[str, ...] = ()


def _s(key: str, kind: str = "fact", *aliases: str, multi: bool = False) -> Slot:
    return Slot(key, kind, multi, aliases)


VOCABULARY: tuple[Slot, ...] = (
    # who the user is
    _s("name", "fact", "user name", "first name", "full name", "called"),
    _s("age", "fact", "years old"),
    _s("birthday", "fact", "birth date", "date of birth"),
    _s(
        "home city",
        "fact",
        "city",
        "location",
        "residence",
        "hometown",
        "lives in",
        "current city",
        "place of residence",
        "town",
        "live in",  # a phrase: "I earn my living as a baker" names no city
        "based in",
        "moved to",
        "relocated to",
    ),
    _s("home country", "fact", "country", "country of residence"),
    _s("nationality", "fact", "citizenship"),
    _s("native language", "fact", "mother tongue", "first language"),
    _s("job", "fact", "occupation", "profession", "role", "job title", "career", "work as", "position"),
    _s(
        "employer",
        "fact",
        "company",
        "workplace",
        "works at",
        "work at",
        "organisation",
        "organization",
        "firm",
        "works for",
    ),
    _s("education", "fact", "school", "university", "degree", "field of study", "studies"),
    # people and animals
    _s("partner name", "fact", "partner", "spouse", "wife", "husband", "girlfriend", "boyfriend"),
    _s("sister name", "fact", "sister"),
    _s("brother name", "fact", "brother"),
    _s("mother name", "fact", "mother", "mom", "mum"),
    _s("father name", "fact", "father", "dad"),
    _s("child name", "fact", "child", "children", "son", "daughter", "kids", multi=True),
    _s("dog name", "fact", "dog", "dog's name", "puppy"),
    _s("cat name", "fact", "cat", "cat's name", "kitten"),
    _s("pet", "fact", "pets", "animal", multi=True),
    # things and habits
    _s("car", "fact", "vehicle", "car brand", "drives", "car model"),
    _s("instrument", "fact", "musical instrument", "plays", "plays instrument", multi=True),
    _s("hobby", "preference", "hobbies", "interest", "pastime", "sport", multi=True),
    _s("allergy", "fact", "allergies", "allergic to", "allergic", multi=True),
    # The common diets name the slot: "I'm vegan" says which attribute it is (small extractors
    # filed such values as job or hobby).
    _s(
        "diet",
        "preference",
        "dietary preference",
        "eating habits",
        "dietary restriction",
        "vegetarian",
        "vegan",
        "pescatarian",
        "gluten-free",
        "keto",
        "paleo",
        "halal",
        "kosher",
        "dairy-free",
        "lactose-free",
    ),
    _s("morning drink", "preference", "drink", "favorite drink", "breakfast drink", "coffee", "tea", "beverage"),
    _s("favorite food", "preference", "food", "favourite food", "favorite dish", "cuisine"),
    _s("favorite color", "preference", "colour", "color", "favourite colour"),
    _s("favorite music", "preference", "music", "music genre", "favorite band"),
    _s("health condition", "fact", "condition", "illness", "medication", multi=True),
    # plans and work
    _s(
        "language learning",
        "decision",
        "learning language",
        "language to learn",
        "studying language",
        "language course",
    ),
    _s("project review day", "decision", "review day", "project review", "review meeting", "meeting day"),
    _s("deadline", "decision", "project deadline", "due date", multi=True),
    _s("appointment", "decision", "meeting", "event", multi=True),
    _s("plan", "decision", "plans", "goal", "travel plan", "trip", multi=True),
    _s("programming language", "preference", "coding language", "language used in project"),
    _s("editor", "preference", "ide", "code editor"),
    _s("operating system", "preference", "os"),
    _s("project name", "fact", "project"),
    _s(NOTE, "fact", OTHER, multi=True),
)

BY_KEY: dict[str, Slot] = {s.key: s for s in VOCABULARY}

_WORD = re.compile(r"[a-z0-9]+")
_NOISE = {"my", "the", "a", "an", "current", "users", "user", "s", "of", "is", "new", "old", "i", "am"}
_GENERIC = {"name", "day", "date", "time", "number", "type", "year", "place", "thing"}


_local = threading.local()


def stem(word: str) -> str:
    """The word's English Snowball stem ("lived" ~ "live", "plays" ~ "play", "employed" ~
    "employer"): with plurals only, "I've lived in Graz" did not name the home city. PyStemmer's
    objects are not thread-safe, so each thread has its own."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return str(stemmer.stemWord(word))


def key_words(key: str) -> frozenset[str]:
    return frozenset(_phrase(key))


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


def _naming(key: str, text: str) -> frozenset[str]:
    """The words by which the message names the slot (its key's or an alias's, the longest that
    occurs whole), or none. Generic words alone ("name") do not count."""
    said = _phrase(text)
    slot = BY_KEY.get(key)
    names = [(_phrase(key), True)] + [(_phrase(a), False) for a in (slot.aliases if slot else ())]
    found = [frozenset(words) for words, is_key in names if set(words) - _GENERIC and _within(words, said, is_key)]
    return max(found, key=len, default=frozenset())


def _phrase(text: str) -> tuple[str, ...]:
    """The text's stemmed words in order, without noise words (key_words is their set)."""
    text = text.lower().replace("favourite", "favorite").replace("colour", "color")
    return tuple(stem(w) for w in _WORD.findall(text) if w not in _NOISE)


def _within(words: tuple[str, ...], said: tuple[str, ...], anywhere: bool = False) -> bool:
    """An alias's words in a row ("moved to" in "I moved to Oslo", not in "Let's move the review
    from Friday to Tuesday"); a slot's key's words anywhere ("I drink chai every morning")."""
    if anywhere:
        return set(words) <= set(said)
    n = len(words)
    return any(said[i : i + n] == words for i in range(len(said) - n + 1))


def named_in(key: str, text: str) -> bool:
    """Does the message name the slot: its key's or one of its aliases' words, all of them, in
    the text ("I'm a baker by profession" names job; "I'm vegetarian" does not)?"""
    return bool(_naming(key, text))


def in_passing(key: str, value: str, text: str | None = None) -> bool:
    """Does a value name the slot with some of its words only ("Acme Foods" and favorite food),
    rather than being one of its names ("vegan" and diet, "dog" and dog name)? With the message,
    only a name counts (the value capitalised where the message says it): a common noun's words
    say what it is ("My roommate can't start the day without green tea": "tea" names the morning
    drink; the 0.5B filed it as a job, tuning seeds)."""
    words = _naming(key, value)
    return bool(words) and not key_words(value) <= words and (text is None or _is_name(value, text))


def _is_name(value: str, text: str) -> bool:
    """Is the value written as a name in the message (a capital letter where it occurs)? A value the
    message does not contain counts as a name."""
    at = text.lower().find(value.lower())
    return at < 0 or text[at : at + len(value)] != text[at : at + len(value)].lower()


def nearest_slot(keys: list[str], text: str, value: str) -> str | None:
    """Of slots the message names, the one named nearest the value, if one is strictly nearest:
    "I've played the banjo since I was a kid" names instrument and child name; "played" is next
    to the banjo."""
    said, value_words = _phrase(text), set(_phrase(value))
    at = [i for i, w in enumerate(said) if w in value_words]
    distance = {}
    for key in keys:
        naming = _naming(key, text)
        spots = [j for j, w in enumerate(said) if w in naming]
        if at and spots:
            distance[key] = min(abs(i - j) for i in at for j in spots)
    ranked = sorted(distance.items(), key=lambda kv: kv[1])
    if ranked and (len(ranked) == 1 or ranked[0][1] < ranked[1][1]):
        return ranked[0][0]
    return None


def named_slots(text: str) -> list[str]:
    """The vocabulary's slots a message names (see named_in): ["instrument"] for "I gave up the
    cello; I play the banjo now", ["job", "brother name"] for "My brother works as a nurse". A
    slot named by words within another's is left out: "project review" names the project
    review day, not the project name."""
    naming = {s.key: _naming(s.key, text) for s in VOCABULARY if s.key != NOTE}
    naming = {k: w for k, w in naming.items() if w}
    if _called_is_another_name(naming, _phrase(text)):
        del naming["name"]
    return [k for k, w in naming.items() if not any(w < other for other in naming.values())]


def _called_is_another_name(naming: dict[str, frozenset[str]], said: tuple[str, ...]) -> bool:
    """Does "called" name another name slot than the user's own? What is called is the word just
    before it: "My friend's dog is called Rex" names the dog's name ("name" was the slot named
    nearest the value, so a misfiled fact became the user's name); "I'm called Ana and I have a
    dog" names the user's."""
    if "name" not in naming:
        return False
    before = {said[i - 1] for i, w in enumerate(said) if i and w in naming["name"]}
    return any(k != "name" and "name" in k.split() and w & before for k, w in naming.items())


def slot_named_by(value: str, keys: list[str] | tuple[str, ...] = ()) -> str | None:
    """The slot a value is one of the names of, by its words only ("dog", "the dog" -> dog name;
    "car" -> car), among the vocabulary's and the given keys; None for any other value. Not by
    embedding similarity: that put "gluten" next to the diet slot, and a retraction of "gluten"
    ended the diet the same message had just set."""
    words = key_words(value)
    if not words:
        return None
    return next((k for k in [*BY_KEY, *keys] if k != NOTE and _naming(k, value) == words), None)


# Words that keep a value from being read by its last words: "trip to Paris" is a plan, not a city.
_LINKS = {"to", "in", "at", "from", "of", "for", "with", "on", "by", "and", "or"}
_ARTICLES = {"a", "an", "the"}


@functools.cache
def _kinds() -> dict[str, str]:
    """The shipped lexicon (data/lexicon/kinds.tsv, built from WordNet 3.1 by
    tools/build_lexicon.py): word -> the slot its meaning belongs to."""
    text = resources.files("lmgauge").joinpath("data/lexicon/kinds.tsv").read_text(encoding="utf-8")
    return dict(line.split("\t") for line in text.splitlines() if line)


@functools.cache
def kind_slots() -> frozenset[str]:
    """The slots the lexicon knows the kinds of (a drink, a food, a city, a country, an instrument)."""
    return frozenset(_kinds().values())


def slot_of_kind(value: str, whole: bool = False) -> str | None:
    """The slot a value belongs to by what it is, when WordNet says so without doubt: "oat latte"
    -> morning drink (a latte is a drink), "Porto" -> home city, "banjo" -> instrument; None for
    anything else ("chai" is not in WordNet 3.1; "java" is first an island). A short value is read
    by its last words too ("oat latte", "lattes"), a longer one or one with a linking word
    ("trip to Paris") only whole; with `whole`, every value only whole ("the trumpet" is an
    instrument, "baking bread" no food)."""
    words = _WORD.findall(value.lower())
    while words[:1] and words[0] in _ARTICLES:
        words = words[1:]
    if not words:
        return None
    kinds = _kinds()
    short = len(words) <= 3 and not _LINKS & set(words) and not whole
    tails = [words[i:] for i in range(len(words))] if short else [words]
    for tail in tails:
        phrase = " ".join(tail)
        for form in (phrase, phrase[:-1] if phrase.endswith("s") else None):
            if form and form in kinds:
                return kinds[form]
    return None


def slot_for(key: str) -> Slot:
    """The vocabulary's slot for a canonical key, or a single-valued fact slot of that name."""
    return BY_KEY.get(key) or Slot(key, "fact")


class Canonicaliser:
    """Maps an attribute name to a canonical key (see the module docstring).

    Embedding matching only runs when words do not decide, and only above `min_similarity`:
    a name close to nothing stays its own slot rather than being forced into a wrong one."""

    def __init__(self, embedder: Embedder | None = None, min_similarity: float = 0.7):
        self.embedder = embedder
        self.min_similarity = min_similarity
        self._names: list[tuple[str, str]] = [(s.key, s.key) for s in VOCABULARY]
        self._names += [(a, s.key) for s in VOCABULARY for a in s.aliases]
        self._vectors: np.ndarray | None = None

    def _vocab_vectors(self) -> np.ndarray | None:
        if self.embedder is None:
            return None
        if self._vectors is None:
            self._vectors = self.embedder.embed([n for n, _ in self._names])
        return self._vectors

    def canonical(self, name: str, existing: list[str] | tuple[str, ...] = ()) -> str:
        key = normalise_key(name)
        if not key:
            return key
        if key in BY_KEY or key in existing:
            return key
        words = key_words(key)
        # 1. exactly an alias ("location", "allergic to")
        for alias, canon in self._names:
            if key_words(alias) == words and words:
                return canon
        # 2. an existing key of the store, by words ("review day" ~ "project review day")
        for other in existing:
            if same_slot(other, key):
                return other
        # 3. a vocabulary key by words ("current home city" ~ "home city"), else the longest
        #    alias whose words it contains ("city of residence" ~ "city", "workplace name")
        for canon in BY_KEY:
            if canon != NOTE and same_slot(canon, key):
                return canon
        contained = [
            (len(key_words(alias)), canon)
            for alias, canon in self._names
            if canon != NOTE and key_words(alias) and key_words(alias) <= words and key_words(alias) - _GENERIC
        ]
        if contained:
            return max(contained, key=lambda c: c[0])[1]
        # 4. embeddings: the nearest vocabulary name or existing key, if near enough
        if self.embedder is not None:
            names = list(self._names) + [(k, k) for k in existing]
            vocab = self._vocab_vectors()
            assert vocab is not None  # there is an embedder
            extra = self.embedder.embed([k for k in existing]) if existing else None
            matrix = vocab if extra is None else np.concatenate([vocab, extra])
            q = self.embedder.embed([key])[0]
            sims = matrix @ q / (np.linalg.norm(matrix, axis=1) * (np.linalg.norm(q) or 1.0) + 1e-9)
            best = int(np.argmax(sims))
            if float(sims[best]) >= self.min_similarity:
                return names[best][1]
        return key


SUBJECT_USER = "user"
_USER_WORDS = {"user", "me", "i", "myself", "self", "the user", "you", "my", "mine", ""}


def normalise_subject(subject: str | None) -> str:
    """'user' for the user (however the model says it), else the person in 1-3 lowercase words
    ("my friend" -> "friend")."""
    text = (subject or "").strip().lower()
    if text in _USER_WORDS:
        return SUBJECT_USER
    words = [w for w in _WORD.findall(text) if w not in {"my", "the", "a", "an", "user", "s"}]
    return " ".join(words[:3]) or SUBJECT_USER


# People a user talks about ("my colleague"): a message about one of them, without I, me or we,
# is about that person, whatever subject the extractor gave.
PEOPLE = frozenset(
    "friend colleague coworker neighbour neighbor partner wife husband boyfriend girlfriend sister brother "
    "mother mom mum father dad son daughter boss cousin aunt uncle grandmother grandfather roommate "
    "flatmate".split()
)
_FIRST_PERSON = re.compile(r"\b(i|me|we|us|our|ours|myself)\b", re.I)


def people_in(text: str) -> list[str]:
    """The people a message names, in order: ["brother"] for "My brother works as a nurse"."""
    return [w for w in _WORD.findall(text.lower()) if w in PEOPLE]


def spoken_of(text: str) -> str | None:
    """The person a message is about when it is not the user: "My colleague always drinks
    espresso" -> "colleague" (a 0.5B extractor gave it as the user's). None when the user speaks
    of themselves ("My friend and I moved to Oslo") or names no one."""
    if _FIRST_PERSON.search(text):
        return None
    return next(iter(people_in(text)), None)
