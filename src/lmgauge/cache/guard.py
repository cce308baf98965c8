"""The guards that make a semantic cache safe to turn on.

Two questions close by embedding can still ask different things: "is X safe" vs "is X not safe"
(similarity ~0.95), "in 2023" vs "in 2024". A semantic hit needs both questions to carry the
same numbers, the same negations and the same named things, and no swapped topic word.
"""

from __future__ import annotations

import difflib
import re

from ..embedding import Embedder
from .keys import squash_whitespace

_CONTRACTIONS = [
    (re.compile(r"\bcan't\b|\bcannot\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'d\b"), " would"),
    (re.compile(r"\b(what|who|where|when|how|it|that|there|here)'s\b"), r"\1 is"),
]
NEGATION_WORDS = frozenset("not no never none nothing nobody nowhere neither nor without".split())
# Antonyms made by a prefix ("unsafe", "illegal", "dislike"): a negation when the other question
# has the bare word.
NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "non-")
NUMBER_WORDS: dict[str, float] = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
NUMBER_WORDS.update(
    {
        "thirty": 30,
        "forty": 40,
        "fifty": 50,
        "sixty": 60,
        "seventy": 70,
        "eighty": 80,
        "ninety": 90,
        "hundred": 100,
        "thousand": 1000,
        "million": 10**6,
        "billion": 10**9,
        "dozen": 12,
        "half": 0.5,
        "twice": 2,
        "double": 2,
        "triple": 3,
    }
)
ORDINALS = {
    w: i + 1
    for i, w in enumerate("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split())
}
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
            if w.startswith(prefix) and len(w) > len(prefix) + 2 and w[len(prefix) :] in other_words:
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
        found.add(squash_whitespace(quoted.lower()))
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
        for x, y in zip(wa[i1:i2], wb[j1:j2], strict=False):
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
