"""Compaction: trim never splits a tool call from its results, summarize adds notes on the dropped
turns to a running summary (never from scratch) and keeps no copy of the transcript, hybrid pins
memories, every compaction is logged."""

from __future__ import annotations

import re

import pytest

from lmgauge.client import Client
from lmgauge.config import ContextSettings
from lmgauge.context.compaction import (
    SUMMARY_HEADER,
    Summarizer,
    compact,
    compactions,
    copies_prompt,
    should_compact,
    split_text,
    turn_blocks,
    whole_sentences,
)
from lmgauge.context.memory import Memory
from lmgauge.context.tokens import ServerTokens
from lmgauge.context.window import Budget, ContextWindow
from lmgauge.errors import ContextOverflowError, InvalidOptionError
from lmgauge.store import Store
from lmgauge.types import Message
from support.standins import OllamaStandin


def conversation(turns: int, words: int = 20) -> list[Message]:
    out = [Message("system", "Be helpful.")]
    for i in range(1, turns + 1):
        out += [Message("user", f"u{i} " + "word " * words), Message("assistant", f"a{i} " + "reply " * words)]
    return out


def ids(messages: list[Message]) -> str:
    return " ".join(m.content.split()[0] for m in messages)


def tool_turn(i: int) -> list[Message]:
    return [
        Message("user", f"u{i} what is the weather?"),
        Message("assistant", "", tool_calls=[{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]),
        Message("tool", "rain, 7 degrees " * 10, tool_name="weather"),
        Message("tool", "wind 20 km/h " * 10, tool_name="weather"),
        Message("assistant", f"a{i} It rains in Oslo."),
    ]


def test_turns_start_at_user_messages_so_tool_results_stay_with_their_call():
    messages = [Message("system", "s")] + tool_turn(1) + tool_turn(2)
    head, blocks = turn_blocks(messages)
    assert [m.role for m in head] == ["system"]
    assert [[m.role for m in b] for b in blocks] == [["user", "assistant", "tool", "tool", "assistant"]] * 2


def test_trim_keeps_the_system_prompt_and_whole_recent_turns():
    window = ContextWindow(ServerTokens(), num_ctx=1200, reserve=200)
    messages = conversation(3, words=10)
    for i in range(4, 9):
        messages += tool_turn(i)
    result = compact(messages, "trim", window, keep_turns=4, target=0.5)
    assert result.messages[0] == Message("system", "Be helpful.")
    _, blocks = turn_blocks(result.messages)
    assert all(b[0].role == "user" for b in blocks)  # no orphan tool result, no orphan answer
    for b in blocks:
        roles = [m.role for m in b]
        if "tool" in roles:
            assert roles == ["user", "assistant", "tool", "tool", "assistant"]
    assert result.tokens_after <= 0.5 * window.limit < result.tokens_before
    assert result.messages[-5:] == messages[-5:]  # the last turn, whole
    assert result.dropped == len(messages) - len(result.messages)
    assert result.summary is None and result.strategy == "trim"


def test_the_last_turn_always_stays_and_one_too_big_is_refused_by_name():
    window = ContextWindow(ServerTokens(), num_ctx=400, reserve=100)
    messages = conversation(2, words=5) + [Message("user", "x" * 240)]
    result = compact(messages, "trim", window)
    assert result.messages[-1].content == "x" * 240 and len(result.messages) == 2  # system + it
    with pytest.raises(ContextOverflowError, match="message 2 \\(user\\)"):
        compact(conversation(2, words=5) + [Message("user", "x" * 400)], "trim", window)


@pytest.mark.parametrize(
    "budget, n, cfg, expected",
    [
        (Budget(600, 1000, 200), 5, ContextSettings(), "75%"),
        (Budget(500, 1000, 200), 5, ContextSettings(), None),
        (Budget(500, 1000, 200), 5, ContextSettings(compact_at_tokens=400), "400"),
        (Budget(100, 1000, 200), 30, ContextSettings(compact_at_messages=30), "30 messages"),
        (Budget(799, 1000, 200), 5, ContextSettings(strategy="none"), None),
    ],
)
def test_triggers(budget, n, cfg, expected):
    reason = should_compact(budget, n, cfg)
    assert (reason is None) if expected is None else (expected in reason)


def test_settings_refuse_a_target_above_the_trigger():
    with pytest.raises(ValueError):
        ContextSettings(compact_at=0.5, target=0.6)


def summarizing_server(echo: set[str] = frozenset(), copies_notes: bool = False) -> OllamaStandin:  # type: ignore[assignment]
    """Answers a request for notes with 'N(<ids of the messages>)', or with the conversation
    itself when it holds a message id in `echo` (what small models do); a request to shorten
    notes with 'M(<first id>-<last id>)', or (`copies_notes`) with its own prompt."""

    def reply(body):
        text = body["messages"][-1]["content"]
        ids = re.findall(r"\b([ua]\d+)\b", text)
        if text.startswith("Notes about a user"):
            return text if copies_notes else f"M({ids[0]}-{ids[-1]})"
        if echo & set(ids):
            return "Conversation:\n" + text.split('"""')[1]
        return f"N({' '.join(ids)})"

    return OllamaStandin(reply=reply)


def test_summaries_add_notes_on_the_new_turns_to_the_previous_summary(settings, tmp_path):
    store = Store(tmp_path / "s.db")
    with summarizing_server() as server, Client(settings.model_copy(update={"ollama_host": server.url})) as client:
        window = ContextWindow(ServerTokens(), num_ctx=1500, reserve=200)
        summarizer = Summarizer(client, "ollama:standin", window.counter, num_ctx=4000, max_tokens=150)
        first = compact(
            conversation(8), "summarize", window, summarizer=summarizer, keep_turns=2, store=store, conversation="c1"
        )
        dropped = conversation(8)[1 : 1 + first.dropped]
        assert first.summary == f"N({ids(dropped)})" and first.kept[0].content.split()[0] not in first.summary
        assert first.messages[0].content.startswith("Be helpful.\n\n" + SUMMARY_HEADER)
        # The session goes on with what it kept; the next compaction takes notes on the new turns only.
        later = first.kept + conversation(12)[17:]
        second = compact(
            [Message("system", "Be helpful.")] + later,
            "summarize",
            window,
            summarizer=summarizer,
            previous_summary=first.summary,
            keep_turns=2,
            store=store,
            conversation="c1",
        )
        prompt = server.requests[-1].body["messages"][-1]["content"]
        assert "u1 " not in prompt  # not re-summarized from scratch
        assert second.summary == first.summary + f"\nN({ids(later[: second.dropped])})"
    logged = compactions(store, "c1")
    assert len(logged) == 2 and all(r["tokens_after"] < r["tokens_before"] and r["ms"] > 0 for r in logged)
    assert logged[0]["strategy"] == "summarize" and logged[0]["summary_tokens"] > 0


def test_notes_grown_past_their_bound_are_rewritten_shorter(settings):
    with summarizing_server() as server, Client(settings.model_copy(update={"ollama_host": server.url})) as client:
        counter = ServerTokens()
        summarizer = Summarizer(client, "ollama:standin", counter, num_ctx=4000, max_tokens=60)
        previous = "N(" + " ".join(f"u{i} a{i}" for i in range(1, 9)) + ")"
        summary = summarizer.fold(previous, conversation(12)[17:])
        shorten = server.requests[-1].body["messages"][-1]["content"]
    assert previous in shorten and "N(u9 a9" in shorten  # both notes, oldest first
    assert summary == "M(u1-a12)"


def test_notes_that_cannot_be_shortened_lose_their_oldest_part_and_say_so(settings):
    with (
        summarizing_server(copies_notes=True) as server,
        Client(settings.model_copy(update={"ollama_host": server.url})) as client,
    ):
        summarizer = Summarizer(client, "ollama:standin", ServerTokens(), num_ctx=4000, max_tokens=60)
        previous = "N(" + " ".join(f"u{i} a{i}" for i in range(1, 9)) + ")"
        summary = summarizer.fold(previous, conversation(12)[17:])
    assert summary == "N(u9 a9 u10 a10 u11 a11 u12 a12)"  # the newest notes
    assert summarizer.problems == [
        "the summarizer copied its prompt; its answer is not used",
        "the summary could not be shortened; its 1 oldest note(s) were dropped",
    ]


def test_a_summary_that_copies_the_conversation_is_not_kept(settings):
    """Small models asked for notes sometimes write the transcript out again: that is no
    summary, and would bring back the old words of every message it copied."""
    with (
        summarizing_server(echo={"u3"}) as server,
        Client(settings.model_copy(update={"ollama_host": server.url})) as client,
    ):
        window = ContextWindow(ServerTokens(), num_ctx=1500, reserve=200)
        summarizer = Summarizer(client, "ollama:standin", window.counter, num_ctx=4000, max_tokens=60)
        result = compact(
            conversation(8), "summarize", window, summarizer=summarizer, keep_turns=2, previous_summary="N(u0)"
        )
    assert result.summary == "N(u0)" and "word word" not in result.messages[0].content
    assert result.warnings == ["the summarizer copied its prompt; its answer is not used"]
    assert copies_prompt("The user lives in Lyon.\nUser: I moved to Dub")  # cut off mid-line, as at num_predict
    assert not copies_prompt("The user said u1.\nThe user's dog is Rex.")


def test_a_stateless_caller_reuses_what_was_folded_for_the_same_prefix(settings, tmp_path):
    store = Store(tmp_path / "s.db")
    with summarizing_server() as server, Client(settings.model_copy(update={"ollama_host": server.url})) as client:
        window = ContextWindow(ServerTokens(), num_ctx=1500, reserve=200)
        summarizer = Summarizer(client, "ollama:standin", window.counter, num_ctx=4000, max_tokens=60, store=store)
        compact(conversation(8), "summarize", window, summarizer=summarizer, keep_turns=2)
        calls = len(server.requests)
        # The gateway gets the whole history again, two turns longer: only the new part is folded.
        again = compact(conversation(10), "summarize", window, summarizer=summarizer, keep_turns=2)
        assert len(server.requests) == calls + 1
        new_part = server.requests[-1].body["messages"][-1]["content"]
        assert "u7" in new_part and "u1 " not in new_part
        assert again.summary.startswith("N(u1") and again.summary.split("\n")[1].startswith("N(u7")


def test_turns_too_long_for_one_summary_call_are_folded_in_a_chain(settings):
    with summarizing_server() as server, Client(settings.model_copy(update={"ollama_host": server.url})) as client:
        counter = ServerTokens()
        summarizer = Summarizer(client, "ollama:standin", counter, num_ctx=900, max_tokens=60)
        summary = summarizer.fold(None, conversation(12)[1:])
        prompts = [r.body["messages"] for r in server.requests]
    assert len(prompts) >= 2 and all(counter.count([Message(**m) for m in p]) <= 900 - 60 for p in prompts)
    assert "a12" in summary  # each call adds its notes; the notes, grown too long, are shortened


def test_hybrid_pins_current_memories(settings, tmp_path):
    store = Store(tmp_path / "s.db")
    memory = Memory(store)
    memory.remember("fact", "home city", "Lyon")
    memory.remember("fact", "home city", "Oslo")
    memory.remember("fact", "dog name", "Rex")
    with summarizing_server() as server, Client(settings.model_copy(update={"ollama_host": server.url})) as client:
        window = ContextWindow(ServerTokens(), num_ctx=1500, reserve=200)
        summarizer = Summarizer(client, "ollama:standin", window.counter, num_ctx=1500, max_tokens=60)
        result = compact(conversation(8), "hybrid", window, summarizer=summarizer, memory=memory, keep_turns=2)
    system = result.messages[0].content
    assert "home city: Oslo" in system and "dog name: Rex" in system and "Lyon" not in system
    assert {m.value for m in result.pinned} == {"Oslo", "Rex"}


def test_summarizing_without_a_model_is_refused_clearly():
    window = ContextWindow(ServerTokens(), num_ctx=1500, reserve=200)
    with pytest.raises(InvalidOptionError, match="summarizer"):
        compact(conversation(8), "summarize", window)
    with pytest.raises(InvalidOptionError, match="trim, summarize or hybrid"):
        compact(conversation(8), "none", window)  # type: ignore[arg-type]


def test_split_text_cuts_at_line_ends_into_pieces_that_fit():
    text = "".join(f"line {i} " + "x" * 20 + "\n" for i in range(20))
    pieces = split_text(text, lambda t: len(t) <= 100)
    assert "".join(pieces) == text and all(len(p) <= 100 for p in pieces)
    assert all(p.endswith("\n") for p in pieces[:-1])
    assert "".join(split_text("y" * 250, lambda t: len(t) <= 100)) == "y" * 250


def test_the_gateway_guard_entry_point_trims_to_its_budget_by_its_own_count(tmp_path):
    from lmgauge.config import Settings
    from lmgauge.context.compaction import compact_to_budget
    from lmgauge.gateway.app import wire

    gateway = wire(Settings(home=tmp_path))
    compactor = gateway.compactor
    assert compactor is compact_to_budget  # app.py hands it to the gateway at start-up
    counter = ServerTokens()
    messages = conversation(10, words=10)
    for i in range(11, 14):
        messages += tool_turn(i)
    out = compactor(messages, 500, counter.count)
    assert counter.count(out) <= 500 < counter.count(messages)
    assert out[0].role == "system" and out[-5:] == messages[-5:]
    assert all(b[0].role == "user" for b in turn_blocks(out)[1])
    with pytest.raises(ContextOverflowError):
        compactor(messages, 100, counter.count)


def test_notes_cut_off_at_the_token_limit_end_at_their_last_whole_sentence():
    assert whole_sentences("The user is a baker. She moved to Perth, which she") == "The user is a baker."
    assert whole_sentences("The user likes tea!\nThe user") == "The user likes tea!"
    assert whole_sentences("version 1.5 of the") == "version 1.5 of the"  # no sentence end: kept whole
