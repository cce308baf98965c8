"""The prompts a benchmark sends: built-in sets, prompt files, and text of an exact token length.

Built-in cases, in the spirit of llama-bench's pp (prompt processing) and tg (text generation):
  short   a one-line request for a long answer: decode-heavy (tg)
  medium  a ~300-token passage to summarize: both phases
  long    a ~1500-token passage with a one-sentence question, answer capped at 16 tokens:
          prefill-heavy (pp)
Sets: `default` (all three), `short`, `medium`, `long`, `pp` (= long), `tg` (= short).

A prompt file is `.txt` (one prompt per non-empty line) or `.json`/`.jsonl` (objects with
`prompt` or `messages`, and optional `name`, `system`, `num_predict`).

Passages are generated from a fixed seed: natural-looking English that tokenizes like prose,
never repeats a sentence verbatim, and is the same on every machine and every run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError

SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class BenchPrompt:
    name: str
    messages: list[dict[str, str]] = field(hash=False)
    num_predict: int | None = None  # a cap for this case (prefill-heavy cases ask for little)
    kind: str = ""  # "tg", "pp", "mixed", or "" for user prompts

    def with_nonce(self, nonce: str) -> list[dict[str, str]]:
        """The messages with `[nonce]` opening the system message (added if absent).

        A unique nonce defeats prefix caching: with it first, the prompt differs from every
        earlier one from its first content token, so only the chat template's opening tokens
        (e.g. `<|im_start|>system\\n`) can be reused, and those are reported as cached.
        """
        messages = [dict(m) for m in self.messages]
        if messages and messages[0].get("role") == "system":
            messages[0]["content"] = f"[{nonce}] {messages[0]['content']}"
        else:
            messages.insert(0, {"role": "system", "content": f"[{nonce}] {SYSTEM}"})
        return messages


def builtin_prompts() -> dict[str, BenchPrompt]:
    return {
        "short": BenchPrompt(
            "short",
            [
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": "Write a long story about a lighthouse keeper who finds a message in a bottle.",
                },
            ],
            kind="tg",
        ),
        "medium": BenchPrompt(
            "medium",
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": passage(230, seed=1) + "\n\nSummarize the text above in a few paragraphs."},
            ],
            kind="mixed",
        ),
        "long": BenchPrompt(
            "long",
            [
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": passage(1240, seed=2) + "\n\nIn one sentence: who is the text above about?",
                },
            ],
            num_predict=16,
            kind="pp",
        ),
    }


PROMPT_SETS = {
    "default": ("short", "medium", "long"),
    "all": ("short", "medium", "long"),
    "short": ("short",),
    "tg": ("short",),
    "medium": ("medium",),
    "long": ("long",),
    "pp": ("long",),
}


def load_prompts(spec: str | None) -> list[BenchPrompt]:
    """A built-in set name, comma-separated set names, or a prompt file."""
    spec = spec or "default"
    builtin = builtin_prompts()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names and all(n in PROMPT_SETS for n in names):
        chosen = dict.fromkeys(p for n in names for p in PROMPT_SETS[n])
        return [builtin[p] for p in chosen]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise InvalidOptionError(f"--prompts {spec!r} is neither a built-in set ({', '.join(PROMPT_SETS)}) nor a file")
    return _read_prompt_file(path)


def _read_prompt_file(path: Path) -> list[BenchPrompt]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        items: list[Any] = [{"prompt": line} for line in lines]
    else:
        try:
            if path.suffix == ".jsonl":
                items = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                data = json.loads(text)
                items = data if isinstance(data, list) else data.get("prompts", [])
        except ValueError as exc:
            raise InvalidOptionError(f"prompt file {path} is not valid JSON: {exc}") from None
    prompts = []
    for i, item in enumerate(items, 1):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not (item.get("prompt") or item.get("messages")):
            raise InvalidOptionError(f"prompt {i} in {path} needs a 'prompt' string or a 'messages' list")
        if item.get("messages"):
            messages = item["messages"]
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
                raise InvalidOptionError(f"prompt {i} in {path}: each message needs 'role' and 'content'")
        else:
            messages = [{"role": "user", "content": str(item["prompt"])}]
            if item.get("system"):
                messages.insert(0, {"role": "system", "content": str(item["system"])})
        cap = item.get("num_predict")
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise InvalidOptionError(f"prompt {i} in {path}: num_predict must be a positive integer")
        prompts.append(BenchPrompt(str(item.get("name") or f"p{i}"), messages, cap))
    if not prompts:
        raise InvalidOptionError(f"prompt file {path} has no prompts")
    names = [p.name for p in prompts]
    if len(set(names)) != len(names):
        raise InvalidOptionError(f"prompt names in {path} must be unique")
    return prompts


# --- generated prose ---------------------------------------------------------------------------

_SUBJECTS = (
    "The old keeper",
    "Mara, the keeper's daughter,",
    "A fisherman from the northern cove",
    "The harbour master",
    "A young cartographer",
    "The village baker",
    "Two sailors on shore leave",
    "The schoolteacher",
    "A travelling clockmaker",
    "The ferry captain",
    "Her grandmother",
    "The coast guard officer",
    "A visiting botanist",
    "The innkeeper",
    "The lighthouse cat",
)
_VERBS = (
    "watched",
    "recorded",
    "repaired",
    "described",
    "carried",
    "remembered",
    "painted",
    "studied",
    "counted",
    "followed",
    "questioned",
    "measured",
    "polished",
    "buried",
    "found",
)
_OBJECTS = (
    "the great brass lens",
    "the tide tables",
    "a broken compass",
    "the winter storms",
    "a bundle of old letters",
    "the path along the cliffs",
    "the signal flags",
    "the ship's bell",
    "a map of the sandbanks",
    "the lamp's copper chimney",
    "the logbook of 1911",
    "a bottle sealed with wax",
    "the fog horn",
    "the names of the drowned",
    "the supply boat",
)
_TAILS = (
    "before the storm arrived.",
    "while the bells rang in the village below.",
    "as the fog rolled in from the sea.",
    "long after midnight.",
    "without telling anyone.",
    "because the light had failed twice that month.",
    "in the spring of that year.",
    "with great care and very little money.",
    "until the gulls woke the whole island.",
    "and wrote everything down in a small green notebook.",
    "though nobody believed the story.",
    "under a sky the colour of slate.",
    "while the kettle whistled in the kitchen.",
    "so that the ships could pass the reef safely.",
    "and never spoke of it again.",
)


def passage(words: int, seed: int = 0) -> str:
    """About `words` words of deterministic prose, in paragraphs."""
    rng = random.Random(seed)
    sentences: list[str] = []
    count = 0
    while count < words:
        sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
        sentences.append(sentence)
        count += len(sentence.split())
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs)


SWEEP_QUESTION = "\n\nRetell the text above in your own words, in detail."


def sized_prompt(
    target_tokens: int, count: Callable[[list[dict[str, str]]], int], nonce: str, seed: int = 3
) -> tuple[list[dict[str, str]], int]:
    """Messages whose templated prompt is as close to `target_tokens` as whole words allow
    (from below), with the nonce opening the system message, and their token count.

    `count` gives the exact prompt length of a message list (the engine's own tokenizer and
    chat template), so the context a sweep point fills is known before it is sent.
    """
    words = passage(int(target_tokens * 1.0) + 50, seed=seed).split(" ")

    def build(n: int) -> list[dict[str, str]]:
        return BenchPrompt(
            "sweep",
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": " ".join(words[:n]) + SWEEP_QUESTION}],
        ).with_nonce(nonce)

    lo, hi = 0, len(words)
    if count(build(hi)) < target_tokens:
        raise InvalidOptionError(f"could not build a prompt of {target_tokens} tokens")
    while lo < hi:  # the largest n whose prompt fits the target
        mid = (lo + hi + 1) // 2
        if count(build(mid)) <= target_tokens:
            lo = mid
        else:
            hi = mid - 1
    messages = build(lo)
    return messages, count(messages)
