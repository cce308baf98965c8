"""A managed conversation on the real embedded model: bounded prompts, the alert, refusals that
name the numbers, memory extraction through the grammar, and a tiny run of the evaluation."""

from __future__ import annotations

import pytest

from lmgauge.client import Client
from lmgauge.config import load_settings
from lmgauge.context.conversation import OUTDATED, Conversation
from lmgauge.context.evaluation import eval_retrieval, run_strategy
from lmgauge.context.memory import Memory
from lmgauge.context.synthetic import FILLER, conversation
from lmgauge.context.tokens import counter_for
from lmgauge.embedding import WordLlamaEmbedder
from lmgauge.errors import ContextOverflowError
from lmgauge.store import Store

pytestmark = pytest.mark.integration

GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # Module-scoped (one model load for the file), so it sets its own home: the per-test
    # isolated home does not exist yet when it is created.
    settings = load_settings(parallel=2, keep_alive=-1, home=tmp_path_factory.mktemp("home"))
    with Client(settings) as c:
        yield c


@pytest.fixture(scope="module")
def embedder():
    return WordLlamaEmbedder()


def replay(conv: Conversation, turns: int) -> list:
    """Small talk with canned answers (no model call for the answers, no extraction)."""
    return [conv.record(q, a, extract=False) for q, a in (FILLER[i % len(FILLER)] for i in range(turns))]


def test_prompts_stay_bounded_while_the_conversation_grows(client, tmp_path):
    cfg = client.settings.context.model_copy(update={"strategy": "trim", "reserve": 64})
    conv = Conversation(client, "smollm2", num_ctx=512, config=cfg, store=Store(tmp_path / "s.db"))
    turns = replay(conv, 30)
    used = [t.budget.used for t in turns]
    assert max(used) <= conv.window.limit and sum(t.compaction is not None for t in turns) >= 3
    assert max(t.prepared.before.used for t in turns) < conv.window.limit  # compacted before the limit
    # Without compaction the same conversation grows turn after turn until it is refused.
    keep = Conversation(client, "smollm2", num_ctx=512, config=cfg.model_copy(update={"strategy": "none"}))
    grown = []
    with pytest.raises(ContextOverflowError) as exc:
        for q, a in (FILLER[i % len(FILLER)] for i in range(30)):
            grown.append(keep.record(q, a).budget.used)
    assert grown == sorted(grown) and "512" in str(exc.value)
    alerted = [i for i, u in enumerate(grown) if u / keep.window.limit >= 0.75]
    assert alerted  # the alert threshold was crossed before the refusal


def test_the_alert_fires_once_when_crossing_75_percent(client):
    cfg = client.settings.context.model_copy(update={"strategy": "none", "reserve": 64})
    seen = []
    conv = Conversation(client, "smollm2", num_ctx=1024, config=cfg, on_alert=seen.append)
    fired = []
    with pytest.raises(ContextOverflowError):
        for q, a in (FILLER[i % len(FILLER)] for i in range(40)):
            t = conv.record(q, a)
            fired.append((t.prepared.alert, t.prepared.before.fraction))
    first = next(i for i, (alert, _) in enumerate(fired) if alert)
    assert fired[first][1] >= 0.75 and fired[first - 1][1] < 0.75
    assert sum(alert for alert, _ in fired) == 1 and len(seen) == 1


def test_a_message_bigger_than_the_window_is_refused_and_nothing_is_lost(client):
    conv = Conversation(client, "smollm2", num_ctx=256, options=GREEDY)
    conv.send("Hello!")
    history = list(conv.history)
    with pytest.raises(ContextOverflowError) as exc:
        conv.send("word " * 400)
    message = str(exc.value)
    assert "this message alone" in message and "256" in message and str(conv.window.reserve) in message
    assert conv.history == history and conv.turn == 1  # the conversation is unchanged: retry shorter


def test_memory_through_the_grammar_and_recall_after_compaction(client, tmp_path, embedder):
    store = Store(tmp_path / "s.db")
    memory = Memory(store, embedder)
    cfg = client.settings.context.model_copy(update={"strategy": "trim", "reserve": 64, "keep_turns": 2})
    conv = Conversation(client, "smollm2", num_ctx=512, config=cfg, memory=memory, store=store, options=GREEDY)
    first = conv.send("I moved from Lyon to Oslo last month.")
    assert first.extraction is not None and first.extraction.attempts == 1  # valid JSON by grammar
    assert first.extraction.warnings == []
    replay(conv, 12)  # the statement leaves the prompt
    prepared = conv.prepare("Which city do I live in now?")
    assert "Oslo" not in "\n".join(m.content for m in conv.history)
    assert "Oslo" in prepared.prompt_text  # recalled from the archive (or memory)
    assert any(r.turn == 1 for r in prepared.recalled)


def test_memory_extraction_between_turns_keeps_the_chat_cache(client, tmp_path):
    # Extraction has its own system prompt: the scheduler gives it the least recently used slot
    # instead of the one holding the conversation, so the next turn evaluates only what is new.
    memory = Memory(Store(tmp_path / "s.db"))
    conv = Conversation(client, "smollm2", num_ctx=1024, options=GREEDY, memory=memory)
    first = conv.send("Tell me one fact about the Moon.")
    assert first.extraction is not None and first.extraction.attempts >= 1  # a model call ran
    second = conv.send("And one about Mars?")
    assert second.result.timings.cached_tokens >= first.result.timings.prompt_tokens


def test_the_prompt_hides_what_memory_has_since_replaced(client, tmp_path):
    # Memories written as the evaluation's oracle does: no extraction, only what was said.
    memory = Memory(Store(tmp_path / "s.db"))
    conv = Conversation(client, "smollm2", num_ctx=2048, options=GREEDY, memory=memory)
    said = ["I live in Lyon.", "We relocated from Lyon to Dublin."]
    conv.record(said[0], "Noted.", extract=False)
    memory.remember(None, "home city", "Lyon", conversation=conv.id, source_turn=1, source_text=said[0])
    assert conv.prepare("Which city do I live in now?").messages[1].content == said[0]  # still true
    conv.record(said[1], "Noted.", extract=False)
    memory.remember(None, "home city", "Dublin", op="update", conversation=conv.id, source_turn=2, source_text=said[1])
    conv.summary = "The user lives in Lyon. They have a dog, Rex.\nThe user moved from Lyon to Dublin."
    prompt = conv.prepare("Which city do I live in now?").messages
    users = [m.content for m in prompt if m.role == "user"]
    # The old statement is not shown, the change itself is; the history keeps what was said.
    assert users[:2] == [OUTDATED, said[1]]
    assert not any("live in Lyon" in m.content for m in prompt)
    assert [m.content for m in conv.history if m.role == "user"] == said
    # The summary in the system prompt loses the stale sentence and keeps the rest.
    system = prompt[0].content
    assert "lives in Lyon" not in system
    assert "They have a dog, Rex.\nThe user moved from Lyon to Dublin." in system


def test_a_newly_hidden_statement_is_evaluated_before_the_next_turn(client, tmp_path):
    memory = Memory(Store(tmp_path / "s.db"))
    conv = Conversation(client, "smollm2", num_ctx=2048, options=GREEDY, memory=memory, background=True, extract=False)
    conv.send("I live in Lyon.")
    memory.remember(None, "home city", "Lyon", conversation=conv.id, source_turn=1)
    change = conv.prepare("We relocated from Lyon to Dublin.")
    memory.remember(None, "home city", "Dublin", op="update", conversation=conv.id, source_turn=2)
    conv.commit(change, "Noted.")  # hiding turn 1 changes how the next prompt starts
    conv.settle()
    start = conv.system_message() + conv._shown_history()
    assert start[1].content == OUTDATED
    asked = conv.send("Which city do I live in now?")
    # The new start was evaluated in the background: the question found it in the cache.
    assert asked.result.timings.cached_tokens >= conv.counter.count(start) - 8
    assert [j.name for j in conv.background.jobs if j.turn == 2] == ["prefill"]


def test_tiny_evaluation_separates_retrieval_from_the_model(client, embedder):
    synth = conversation(5, turns=16, slots=4, updates=2)
    base = client.settings.context
    hybrid = run_strategy(
        client,
        "smollm2",
        synth,
        "hybrid",
        "hybrid",
        512,
        base=base,
        embedder=embedder,
        memory_mode="oracle",
        answer=False,
    )
    trim = run_strategy(client, "smollm2", synth, "truncation", "trim", 512, base=base, embedder=None, answer=False)
    # 4 slots; one may be retracted (nothing to ask), the others are asked about.
    assert len(hybrid.questions) == len(trim.questions) == len(synth.questions) >= 3
    assert hybrid.summary()["in_prompt"] == 1.0 > trim.summary()["in_prompt"]
    assert max(hybrid.tokens) <= hybrid.limit and hybrid.compactions
    assert hybrid.supersession["accuracy"] == 1.0 and hybrid.stale_recalled == 0


def test_each_run_starts_from_a_freshly_loaded_model(client, monkeypatch):
    """A run must not depend on the one before: the prefix cache it leaves changes the
    floating-point path, and greedy answers flipped with it. The model is unloaded and loaded
    again before each run."""
    ref = client.resolve("smollm2")
    engine = client.engine(ref)
    unloaded = []
    real = engine.unload
    monkeypatch.setattr(engine, "unload", lambda model: (unloaded.append(model), real(model)))
    synth = conversation(5, turns=12, slots=3, updates=1)
    for _ in range(2):
        run_strategy(
            client, "smollm2", synth, "t", "trim", 512, base=client.settings.context, embedder=None, answer=False
        )
    assert unloaded == [ref.target, ref.target]
    assert [m.name for m in client.loaded()].count(ref.target) == 1, client.loaded()  # loaded again, once


def test_tiny_retrieval_evaluation_reports_every_method(client, embedder):
    report = eval_retrieval(counter_for(client, "smollm2"), {"wordllama": embedder}, questions=10)
    methods = [r["method"] for r in report["rows"]]
    assert methods == ["bm25", "embed (wordllama)", "hybrid (wordllama)"]
    hybrid = report["rows"][2]
    assert 0 <= hybrid["recall@1"] <= hybrid["recall@5"] <= hybrid["recall@10"] <= 1
    assert hybrid["budget 512"] <= hybrid["budget 2048"]
