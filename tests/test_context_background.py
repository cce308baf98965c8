"""Memory work off the critical path: a turn does not wait for a compaction that is still
running unless its prompt would not fit without it (then it waits, and the wait is counted);
extraction runs after the answer and its memories land. Against a real HTTP stand-in server
whose summaries block until the test releases them, so "still running" is a fact, not a race."""

from __future__ import annotations

import json
import threading

from lmgauge.client import Client
from lmgauge.context.compaction import NOTES_SYSTEM
from lmgauge.context.conversation import Conversation
from lmgauge.context.memory import Memory
from lmgauge.context.synthetic import FILLER
from lmgauge.context.tokens import ServerTokens
from lmgauge.context.window import ContextWindow
from lmgauge.store import Store
from support.standins import OllamaStandin


class ScriptedOllama(OllamaStandin):
    """Answers its scripted reply even when a format is set (the reply is valid JSON already)."""

    def answer(self, body, max_tokens, stop, fmt=None):
        return super().answer(body, max_tokens, stop, None)


def blocking_server(release: threading.Event, extraction: str = '{"memories": []}') -> OllamaStandin:
    """Summaries wait for `release`; extractions answer `extraction`; anything else 'OK.'."""

    def reply(body):
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        if system == NOTES_SYSTEM:
            assert release.wait(60), "the test never released the summary"
            return "The user asked about science."
        if "extract long-term memories" in system:
            return extraction
        return "OK."

    return ScriptedOllama(reply=reply)


def conversation(client: Client, **kw) -> Conversation:
    cfg = client.settings.context.model_copy(update={"strategy": "summarize", "reserve": 64, "keep_turns": 2})
    window = ContextWindow(ServerTokens(), num_ctx=1200, reserve=64)
    return Conversation(client, "ollama:standin", config=cfg, window=window, background=True, **kw)


def test_a_turn_does_not_wait_for_a_compaction_unless_its_prompt_would_not_fit(settings):
    release = threading.Event()
    with blocking_server(release) as server, Client(settings.model_copy(update={"ollama_host": server.url})) as client:
        conv = conversation(client)
        i = 0
        while conv._compacting is None:  # small talk until a compaction is queued after a turn
            q, a = FILLER[i % len(FILLER)]
            turn = conv.record(q, a)
            assert turn.compaction is None and turn.prepared.waited_ms == 0
            i += 1
            assert i < 40, "the conversation never reached the compaction trigger"
        # The summary is blocked, yet the next turn goes ahead: its prompt still fits.
        q, a = FILLER[i % len(FILLER)]
        turn = conv.record(q, a)
        assert turn.compaction is None and conv.waits == 0 and not conv._compacting[0].future.done()
        assert turn.budget.used <= conv.window.limit
        # A message that does not fit beside the history: the turn waits for the compaction.
        big = "Here is my long story. " + "word " * 100
        assert conv.counter.count_text(big) < conv.window.limit  # it fits alone
        threading.Timer(0.5, release.set).start()
        prepared = conv.prepare(big)
        assert conv.waits == 1 and prepared.waited_ms > 0 and release.is_set()
        assert prepared.compaction is not None and prepared.compaction.summary.endswith("The user asked about science.")
        assert "(after the answer)" in prepared.compaction.reason
        assert prepared.budget.used <= conv.window.limit and conv.waits == 1  # the one compaction was enough
        conv.close()


def test_extraction_runs_after_the_answer_and_its_memories_land(settings, tmp_path):
    release = threading.Event()
    release.set()
    found = json.dumps({"memories": [{"op": "add", "subject": "user", "key": "dog name", "value": "Rex"}]})
    with (
        blocking_server(release, found) as server,
        Client(settings.model_copy(update={"ollama_host": server.url})) as client,
    ):
        memory = Memory(Store(tmp_path / "m.db"))
        conv = conversation(client, memory=memory)
        turn = conv.send("My dog is called Rex.")
        assert turn.answer == "OK."
        conv.settle()
        assert turn.extraction is not None and [r.item.text for r in turn.extraction.stored] == ["dog name: Rex"]
        assert [m.text for m in memory.current()] == ["dog name: Rex"]
        # A message that is only a question is not sent for extraction (recall skips it too).
        asked = len(server.requests)
        question = conv.send("What is my dog's name?")
        conv.settle()
        assert question.extraction is None and len(server.requests) == asked + 1  # the answer only
        conv.close()
