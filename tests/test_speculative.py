"""Speculative decoding's pieces without a model: the acceptance rule against synthetic
distributions (the output must follow the target's distribution whatever the drafts are, and a
wrong rule must be caught by the same check), prompt lookup, the adaptive draft length, and the
vocabulary checks on GGUF headers."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from scipy.stats import chisquare

from lmgauge.engines.speculative import DraftLength, NgramLookup, Payoff, check_vocab_metadata, verify
from lmgauge.errors import InvalidOptionError
from lmgauge.models import inspect_gguf
from lmgauge.types import SpecStats

V = 4  # a small vocabulary slice
LENGTH = 3  # tokens per sample: V**LENGTH joint outcomes
N = 12000


def markov(seed: int) -> np.ndarray:
    """A synthetic 'model': P(next | previous) over V tokens, with uneven, nonzero rows."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(V) * 0.7, size=V) + 0.02
    return p / p.sum(axis=1, keepdims=True)


TARGET = markov(1)
DRAFT = markov(2)  # a different model: its guesses are often wrong


def plain(rng: np.random.Generator) -> tuple[int, ...]:
    out, prev = [], 0
    for _ in range(LENGTH):
        prev = int(rng.choice(V, p=TARGET[prev]))
        out.append(prev)
    return tuple(out)


def speculative(rng: np.random.Generator, k: int, trust_drafts: bool = False) -> tuple[int, ...]:
    """Generate LENGTH tokens by drafting k greedy tokens from DRAFT and verifying them with
    `verify`, the way the scheduler does (sample_row emits, returns None at the end).
    trust_drafts: a wrong rule, emitting each draft instead of the target's sample."""
    out: list[int] = []
    while len(out) < LENGTH:
        prev = context = out[-1] if out else 0
        drafts = []
        for _ in range(k):
            prev = int(np.argmax(DRAFT[prev]))
            drafts.append(prev)

        def sample_row(i: int) -> int | None:
            tok = int(rng.choice(V, p=TARGET[drafts[i - 1] if i else context]))  # noqa: B023  called within this iteration, not after the loop
            if trust_drafts and i < len(drafts):  # noqa: B023  called within this iteration, not after the loop
                tok = drafts[i]  # noqa: B023  called within this iteration, not after the loop
            out.append(tok)
            return tok if len(out) < LENGTH else None

        verify(drafts, sample_row)
    return tuple(out)


def joint_counts(samples: list[tuple[int, ...]]) -> np.ndarray:
    index = {seq: i for i, seq in enumerate(itertools.product(range(V), repeat=LENGTH))}
    counts = np.zeros(len(index))
    for s in samples:
        counts[index[s]] += 1
    return counts


def expected() -> np.ndarray:
    probs = []
    for seq in itertools.product(range(V), repeat=LENGTH):
        p, prev = 1.0, 0
        for tok in seq:
            p *= TARGET[prev, tok]
            prev = tok
        probs.append(p)
    return np.array(probs) * N


@pytest.mark.parametrize("k", [1, 3])
def test_sampled_output_follows_the_target_distribution(k):
    rng = np.random.default_rng(7)
    counts = joint_counts([speculative(rng, k) for _ in range(N)])
    # The drafts were often wrong (else the test would not exercise rejection):
    assert (np.argmax(DRAFT, axis=1) != np.argmax(TARGET, axis=1)).any()
    assert chisquare(counts, expected()).pvalue > 0.001


def test_the_same_check_catches_a_wrong_rule():
    """Emitting drafts unverified gives the draft model's greedy path far too often: the
    chi-square check above must reject it, or it proves nothing."""
    rng = np.random.default_rng(7)
    assert chisquare(joint_counts([plain(rng) for _ in range(N)]), expected()).pvalue > 0.001
    counts = joint_counts([speculative(rng, 2, trust_drafts=True) for _ in range(N)])
    assert chisquare(counts, expected()).pvalue < 1e-6


def test_greedy_output_is_the_targets_own():
    def greedy_plain():
        out, prev = [], 0
        for _ in range(6):
            prev = int(np.argmax(TARGET[prev]))
            out.append(prev)
        return out

    for k in (1, 2, 5):
        out: list[int] = []
        steps = 0
        while len(out) < 6:
            prev = out[-1] if out else 0
            drafts = []
            for _ in range(k):
                prev = int(np.argmax(DRAFT[prev]))
                drafts.append(prev)
            context = out[-1] if out else 0

            def sample_row(i, drafts=drafts, context=context):
                tok = int(np.argmax(TARGET[drafts[i - 1] if i else context]))
                out.append(tok)  # noqa: B023  called within this iteration, not after the loop
                return tok if len(out) < 6 else None  # noqa: B023  called within this iteration, not after the loop

            verify(drafts, sample_row)
            steps += 1
        assert out == greedy_plain()


def test_verify_counts_accepted_drafts_and_stops_at_the_first_mismatch():
    sampled = iter([5, 6, 9, 99])
    rows = []

    def row(i):
        rows.append(i)
        return next(sampled)

    assert verify([5, 6, 7, 8], row) == (2, 9)
    assert rows == [0, 1, 2]  # row 3 (after a rejected draft) is never sampled
    assert verify([1, 2], lambda i: [1, 2, 3][i]) == (2, 3)  # all accepted: one bonus token
    assert verify([], lambda i: 4) == (0, 4)  # no drafts: a plain step
    assert verify([1, 2], lambda i: None) == (0, None)  # the request ended at the first row


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    lookup = NgramLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 6])
    assert lookup.propose(3) == []  # "8 6" / "6" alone never appeared before
    lookup.extend([2, 3])
    assert lookup.propose(4) == [7, 8, 6, 2]  # the latest "2 3" was followed by 7 8 6 2
    lookup.extend([1, 2, 3, 4])
    assert lookup.propose(2) == [5, 9]  # the longest suffix wins: "2 3 4" -> 5 9
    assert NgramLookup([1, 2]).propose(4) == []


def test_prompt_lookup_drafts_across_prompt_and_output():
    prompt = list(range(100, 140))
    lookup = NgramLookup(prompt)
    lookup.extend([100, 101])
    assert lookup.propose(8) == list(range(102, 110))


def test_draft_length_grows_on_acceptance_and_shrinks_on_rejection():
    length = DraftLength(maximum=8, start=4)
    length.update(4, 4)
    assert length.value == 6
    length.update(6, 6)
    length.update(8, 8)
    assert length.value == 8  # capped
    length.update(8, 3)
    assert length.value == 7
    for _ in range(10):
        length.update(2, 0)
    assert length.value == 1  # never below one
    length.update(0, 0)
    assert length.value == 1  # a step without drafts changes nothing


def test_speculation_pauses_where_it_is_slower_than_plain_steps_and_tries_again():
    """On a CPU bound by compute (shared cores), a verification batch costs several plain steps:
    speculating is paused, then retried, and kept where it pays."""
    payoff = Payoff()
    payoff.plain(100)  # one token per 100 ns
    for _ in range(Payoff.MIN_SPEC_STEPS):
        assert payoff.should_draft()
        payoff.speculative(3, 500)  # 3 tokens per 500 ns: slower than plain
    assert payoff.pauses == 1
    assert [payoff.should_draft() for _ in range(Payoff.PAUSE_STEPS)] == [False] * Payoff.PAUSE_STEPS
    assert payoff.should_draft()  # tried again
    for _ in range(10):
        payoff.speculative(4, 200)  # 4 tokens per 200 ns: twice the plain rate
        assert payoff.should_draft()
    assert payoff.pauses == 1  # where it pays it is never paused


def test_one_slow_step_does_not_pause_speculation():
    payoff = Payoff()
    payoff.plain(100)
    payoff.speculative(4, 200)
    payoff.speculative(1, 900)  # a rejected draft
    payoff.speculative(5, 200)
    assert payoff.pauses == 0 and payoff.should_draft()


def test_spec_stats_derive_rates_and_the_speedup_estimate():
    stats = SpecStats(
        mode="lookup", drafted=40, accepted=30, steps=10, draft_ns=0, verify_ns=10_000, plain_steps=2, plain_ns=2_000
    )
    assert stats.acceptance_rate == 0.75
    assert stats.mean_accepted == 3.0
    assert stats.estimated_speedup == pytest.approx(4.0)  # 4 tokens per step, steps cost the same
    assert SpecStats(mode="draft").estimated_speedup is None
    d = stats.to_dict()
    assert d["acceptance_rate"] == 0.75 and d["mode"] == "lookup"


def test_vocabulary_check_refuses_a_different_tokenizer(smollm2_path):
    info = inspect_gguf(smollm2_path)
    check_vocab_metadata(info, info)  # a model can draft for itself
    other = dataclasses.replace(info, n_vocab=info.n_vocab + 1000, path="/models/other.gguf")
    with pytest.raises(InvalidOptionError, match="vocabularies differ in size"):
        check_vocab_metadata(info, other)
    sentencepiece = dataclasses.replace(info, tokenizer_model="llama", path="/models/sp.gguf")
    with pytest.raises(InvalidOptionError, match="tokenizers differ"):
        check_vocab_metadata(info, sentencepiece)


def test_run_verbose_recommends_going_without_speculation_when_it_was_paused():
    from lmgauge.display import speculation_advice

    paused = SpecStats(
        mode="draft",
        drafted=30,
        accepted=20,
        steps=6,
        draft_ns=6_000,
        verify_ns=6_000,
        plain_steps=20,
        plain_ns=20_000,
        pauses=1,
    )
    advice = speculation_advice(paused)
    assert "paused 1 time" in advice and "without the draft model" in advice
    paying = dataclasses.replace(paused, pauses=0, draft_ns=100, verify_ns=1_000)
    assert speculation_advice(paying) is None
