"""The context budget: exact counts with the model's tokenizer and template, upper bounds for a
remote model without one, the alert at 75% and the refusal at 100%."""

from __future__ import annotations

import pytest

from lmgauge.client import Client
from lmgauge.context.tokens import GGUFTokens, ServerTokens, counter_for
from lmgauge.context.window import Budget, ContextWindow
from lmgauge.errors import ContextOverflowError, InvalidOptionError
from lmgauge.types import Message


def test_budget_is_measured_against_the_window_minus_the_reserve():
    b = Budget(used=300, window=1024, reserve=224, alert_at=0.75)
    assert b.limit == 800 and b.fraction == pytest.approx(0.375) and not b.alert and not b.over
    assert Budget(used=600, window=1024, reserve=224).alert
    assert Budget(used=801, window=1024, reserve=224).over
    assert b.free == 500 and b.to_dict()["limit"] == 800


def test_server_counts_are_exact_once_observed_and_an_upper_bound_before():
    counter = ServerTokens()
    history = [Message("user", "hello there"), Message("assistant", "hi")]
    bound = counter.count(history)
    counter.observe(history, 21)
    assert counter.count(history) == 21 <= bound
    more = history + [Message("user", "héllo")]  # 6 bytes, 5 characters: bytes bound tokens
    assert counter.count(more) == 21 + 8 + 6


def test_alert_fires_at_the_threshold_and_refusal_at_100_percent():
    counter = ServerTokens()
    alerts: list[Budget] = []
    window = ContextWindow(counter, num_ctx=200, reserve=40, alert_at=0.75, on_alert=alerts.append)
    small = [Message("user", "x" * 50)]  # 16 + 8 + 50 = 74 of 160: 46%
    assert window.check(small).fraction == pytest.approx(74 / 160) and not alerts
    near = [Message("user", "x" * 100)]  # 124 of 160: 77.5%
    budget = window.check(near)
    assert budget.alert and alerts == [budget]
    assert window.check([Message("user", "x" * 60), Message("assistant", "y" * 60)]).used == 152  # fits
    with pytest.raises(ContextOverflowError):
        window.check([Message("user", "x" * 70), Message("assistant", "y" * 70)])  # 172 > 160


def test_refusal_names_the_conversation_or_the_single_message_too_big():
    window = ContextWindow(ServerTokens(), num_ctx=200, reserve=40)
    with pytest.raises(ContextOverflowError) as exc:
        window.check([Message("user", "x" * 70), Message("assistant", "y" * 70)])
    assert "conversation (2 messages" in str(exc.value) and "200" in str(exc.value)
    with pytest.raises(ContextOverflowError) as exc:
        window.check([Message("user", "short"), Message("user", "z" * 500)])
    message = str(exc.value)
    assert "message 2 (user)" in message and str(16 + 8 + 500) in message and "200" in message


def test_a_reserve_as_big_as_the_window_is_refused():
    with pytest.raises(InvalidOptionError, match="reserve"):
        ContextWindow(ServerTokens(), num_ctx=512, reserve=512)


@pytest.mark.integration
def test_gguf_counts_are_the_engines_prompt_tokens_template_included(llama_engine, smollm2_path):
    counter = GGUFTokens(llama_engine, smollm2_path)
    messages = [Message("system", "Be brief."), Message("user", "Where is Oslo?"), Message("assistant", "Norway.")]
    exact = counter.count(messages)
    assert exact == len(llama_engine.chat_tokens(smollm2_path, messages))
    bare = sum(counter.count_text(m.content) for m in messages)
    assert exact > bare + 3 * 3  # role markers and separators cost tokens in every message
    # The server-side upper bound never undercounts what the engine will evaluate.
    for text in ["plain words", "naïve café — ünïcödé", "x" * 300, "日本語のテキスト", "tab\tand\nnewline"]:
        msgs = messages + [Message("user", text)]
        assert ServerTokens().count(msgs) >= counter.count(msgs)


@pytest.mark.integration
def test_counter_for_uses_a_local_gguf_for_a_remote_model_of_the_same_name(settings):
    with Client(settings) as client:
        assert isinstance(counter_for(client, "smollm2"), GGUFTokens)
        # Served by Ollama, but the same model is installed locally: count with its GGUF.
        assert isinstance(counter_for(client, "ollama:smollm2"), GGUFTokens)
        assert isinstance(counter_for(client, "ollama:no-such-model:7b"), ServerTokens)


@pytest.mark.integration
def test_window_for_model_uses_the_engines_default_window(settings):
    with Client(settings) as client:
        window = ContextWindow.for_model(client, "smollm2")
        assert window.num_ctx == min(settings.num_ctx, 8192) and window.reserve == settings.context.reserve
        assert ContextWindow.for_model(client, "smollm2", num_ctx=1024, reserve=100).limit == 924


def test_a_remote_model_is_counted_by_its_server_after_the_fact(settings):
    from lmgauge.context.conversation import Conversation
    from support.standins import OllamaStandin

    with (
        OllamaStandin(reply="Fine, thanks.") as server,
        Client(settings.model_copy(update={"ollama_host": server.url})) as client,
    ):
        conv = Conversation(client, "ollama:standin", num_ctx=2048)
        assert isinstance(conv.counter, ServerTokens)
        first = conv.send("Hello, how are you?")
        assert not first.budget.exact and first.budget.used >= first.result.timings.prompt_tokens
        # The prompt the server counted is now known exactly; only the new turn is bounded.
        assert conv.counter.count(first.prepared.messages) == first.result.timings.prompt_tokens
        second = conv.prepare("And the weather?")
        assert second.budget.used >= server.prompt_tokens({"messages": [m.to_dict() for m in second.messages]})
