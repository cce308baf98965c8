"""`lmgauge eval context`: does context management keep what matters? Seeded and offline.

Part 1, conversations (synthetic.conversation): a long conversation is replayed turn by turn
under several strategies. Small talk gets canned answers; at each question (a needle asked long
after the fact was stated, maybe after it changed) the model answers from the prompt the
strategy built. Two things are scored separately, because a 135M model is weak at the second:
  - in prompt: the current value reaches the prompt (retrieval side; model-independent for
    truncation and for hybrid memory's archived-turn recall);
  - answer: the model's answer contains the current value (and "stale": an old value instead).
Strategies: keep-everything (a window big enough to hold it all, where the model allows),
keep-everything in the managed window (grows until refused), truncation (trim), summarize,
hybrid (model extraction), and hybrid with oracle memories (the true facts stored directly: what
hybrid does with a perfect extractor). Also: prompt tokens per turn, when the alert fired,
compactions and their cost, and for memory: extraction precision/recall (and facts filed under
the wrong slot), supersession accuracy (updates, retractions, additions to multi-valued slots),
stale values held or recalled as current, answers giving an old value or another person's
(distractors), and the latency memory work adds to a turn. Memory runs as `lmgauge chat` runs
it: extraction and compaction in the background after the answer. The replay lets the
background work finish before the next message (a user reading the answer and typing); the
time it took is reported apart (background ms per turn), and a turn that had to wait anyway
(its prompt did not fit without the compaction) counts as a wait, its time as added latency.

Part 2, documents (synthetic.corpus): evidence recall@k and within 512/1k/2k-token budgets, for
BM25, embeddings and hybrid search, and for the seed's "ask the model which documents" strategy.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ContextSettings
from ..embedding import Embedder
from ..errors import ContextOverflowError
from ..stats import percentile
from ..store import Store
from ..types import Message
from .conversation import Conversation
from .memory import Memory, Recalled, same_value
from .retrieval import DocIndex
from .search import pack
from .slots import SUBJECT_USER
from .synthetic import SynthConversation, conversation, corpus
from .tokens import TokenCounter, counter_for
from .window import ContextWindow

if TYPE_CHECKING:
    from ..client import Client

EVAL_SYSTEM = "You are a helpful assistant. Answer the user's question briefly, using what you know about them."
ANSWER_OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 40}
Progress = Callable[[str, int, int], None]


def contains_value(value: str, text: str) -> bool:
    """Every word of the value occurs in the text as a whole word (case-insensitive)."""
    words = re.findall(r"[a-z0-9]+", value.lower())
    return bool(words) and all(re.search(rf"\b{re.escape(w)}\b", text.lower()) for w in words)


@dataclass
class QuestionResult:
    turn: int
    slot: str
    value: str
    old: list[str]
    in_prompt: bool
    answer: str | None = None  # None: not asked (the prompt was refused, or answers are off)
    correct: bool = False
    stale: bool = False
    prompt_tokens: int = 0
    others: list[str] = field(default_factory=list)  # someone else's values for the slot
    distracted: bool = False  # answered with another person's value
    stale_current: bool = False  # an old (or someone else's) value was a current user memory, or recalled as one


@dataclass
class StrategyRun:
    name: str
    strategy: str
    num_ctx: int
    limit: int
    tokens: list[int] = field(default_factory=list)  # prompt tokens sent, per turn
    uncompacted: list[int] = field(default_factory=list)  # the conversation before compaction
    alert_turn: int | None = None
    alert_fraction: float | None = None
    refused_at: int | None = None
    refusal: str | None = None
    compactions: list[dict[str, Any]] = field(default_factory=list)
    questions: list[QuestionResult] = field(default_factory=list)
    extraction: dict[str, Any] | None = None
    supersession: dict[str, Any] | None = None
    stale_recalled: int = 0  # recalled *memories* (not turns) holding an old value
    added_ms: list[float] = field(default_factory=list)  # per turn: memory/compaction time before the answer
    background_ms: list[float] = field(default_factory=list)  # per turn: background work after it
    answer_ms: list[float] = field(default_factory=list)  # per answered question: the answer's own time
    waits: int = 0  # turns that waited for background work (the prompt did not fit without it)
    seconds: float = 0.0
    answered: bool = True  # the model answered the questions (else only `in_prompt` is scored)

    def summary(self) -> dict[str, Any]:
        asked = [q for q in self.questions if q.answer is not None]
        n = len(self.questions)
        answered = self.answered
        comp_ms = [c["ms"] for c in self.compactions]
        return {
            "name": self.name,
            "strategy": self.strategy,
            "num_ctx": self.num_ctx,
            "limit": self.limit,
            "questions": n,
            "answered": answered,
            "in_prompt": sum(q.in_prompt for q in self.questions) / n if n else None,
            "correct": sum(q.correct for q in self.questions) / n if n and answered else None,
            "stale": sum(q.stale for q in self.questions) / n if n and answered else None,
            "asked": len(asked),
            "tokens_first": self.tokens[0] if self.tokens else None,
            "tokens_max": max(self.tokens) if self.tokens else None,
            "tokens_last": self.tokens[-1] if self.tokens else None,
            "tokens_mean_second_half": statistics.fmean(self.tokens[len(self.tokens) // 2 :]) if self.tokens else None,
            "turns_run": len(self.tokens),
            "refused_at": self.refused_at,
            "alert_turn": self.alert_turn,
            "alert_fraction": self.alert_fraction,
            "compactions": len(self.compactions),
            "compaction_ms_mean": statistics.fmean(comp_ms) if comp_ms else None,
            "stale_recalled": self.stale_recalled,
            "seconds": round(self.seconds, 1),
            "distracted": sum(q.distracted for q in self.questions) / n if n and answered else None,
            "stale_current": sum(q.stale_current for q in self.questions) / n if n else None,
            "waits": self.waits,
        }


def _config(base: ContextSettings, strategy: str, reserve: int) -> ContextSettings:
    return base.model_copy(update={"strategy": strategy, "reserve": reserve})


def run_strategy(
    client: Client,
    model: str,
    synth: SynthConversation,
    name: str,
    strategy: str,
    num_ctx: int,
    *,
    base: ContextSettings,
    embedder: Embedder | None,
    memory_mode: str | None = None,  # None | "model" | "oracle"
    answer: bool = True,
    reserve: int = 256,
    progress: Progress | None = None,
    history_notes: bool = True,
) -> StrategyRun:
    """Replay one conversation under one strategy; see the module docstring."""
    t0 = time.perf_counter()
    fresh_model(client, model)
    cfg = _config(base, strategy, reserve)
    window = ContextWindow.for_model(client, model, num_ctx=num_ctx, reserve=reserve, alert_at=cfg.alert_at)
    run = StrategyRun(name, strategy, num_ctx, window.limit, answered=answer)
    with tempfile.TemporaryDirectory(prefix="lmgauge-eval-") as tmp:
        store = Store(Path(tmp) / "eval.db")
        memory = Memory(store, embedder, history_notes=history_notes) if memory_mode else None
        conv = Conversation(
            client,
            model,
            system=EVAL_SYSTEM,
            config=cfg,
            memory=memory,
            store=store,
            options=ANSWER_OPTIONS,
            extract=memory_mode == "model",
            window=window,
            background=memory_mode is not None,
        )
        score = ExtractionScore()
        try:
            for i, t in enumerate(synth.turns, start=1):
                if progress:
                    progress(name, i, len(synth.turns))
                # The user reads the answer and types: the background work of the last turn runs.
                conv.settle()
                try:
                    prep = conv.prepare(t.user)
                except ContextOverflowError as exc:
                    run.refused_at, run.refusal = i, str(exc)
                    break
                run.tokens.append(prep.budget.used)
                run.uncompacted.append(prep.before.used)
                if memory is not None:
                    run.added_ms.append(prep.memory_ms)
                if prep.alert and run.alert_turn is None:
                    run.alert_turn, run.alert_fraction = i, round(prep.before.fraction, 4)
                if prep.compaction:
                    run.compactions.append({"turn": i, **prep.compaction.to_dict()})
                reply, result = t.assistant, None
                if t.kind == "question":
                    q = QuestionResult(
                        i,
                        t.slot or "",
                        t.value or "",
                        t.old,
                        all(contains_value(v, prep.prompt_text) for v in t.values or [t.value or ""]),
                        prompt_tokens=prep.budget.used,
                        others=t.others,
                    )
                    wrong = t.old + t.others
                    recalled_stale = stale_recalled(memory, prep.recalled, wrong) if memory is not None else 0
                    run.stale_recalled += recalled_stale
                    held = memory.current(SUBJECT_USER) if memory is not None else []
                    q.stale_current = bool(recalled_stale) or any(same_value(o, m.value) for o in wrong for m in held)
                    if answer:
                        result = client.chat(model, prep.messages, options={**ANSWER_OPTIONS, "num_ctx": num_ctx})
                        reply = q.answer = result.content
                        run.answer_ms.append(result.timings.e2e_ms or 0.0)
                        q.correct = all(contains_value(v, reply) for v in t.values or [q.value])
                        q.stale = not q.correct and any(contains_value(o, reply) for o in q.old)
                        q.distracted = not q.correct and any(contains_value(o, reply) for o in q.others)
                    run.questions.append(q)
                turn = conv.commit(prep, reply, result)
                if memory is not None and memory_mode == "oracle":
                    for f in t.facts:
                        memory.remember(
                            f.kind,
                            f.key,
                            f.value,
                            op=f.op,
                            subject=f.subject,
                            conversation=conv.id,
                            source_turn=i,
                            source_text=t.user,
                        )
                if memory_mode == "model":
                    conv.settle()
                    score.add(t.facts, turn.extraction, memory)
                if conv.background is not None:
                    conv.settle()
                    run.background_ms.append(sum(j.ms or 0.0 for j in conv.background.jobs if j.turn == i))
        finally:
            conv.close()
        run.waits = conv.waits
        for turn_no, t in [x for x in synth.questions if run.refused_at is not None and x[0] >= run.refused_at]:
            run.questions.append(QuestionResult(turn_no, t.slot or "", t.value or "", t.old, False))
        if memory_mode == "model":
            run.extraction = score.summary()
        if memory is not None:
            run.supersession = supersession_accuracy(memory, synth, upto=len(run.tokens))
    run.seconds = time.perf_counter() - t0
    return run


def fresh_model(client: Client, model: str) -> None:
    """Unload the model and load it again, so that a run does not depend on the one before. The
    engine's prefix cache, left by the run before, decides how much of a prompt is evaluated anew,
    and so the order of floating-point sums; greedy answers flipped with it (Qwen2.5 0.5B, oracle
    memories, test seed 0: "Biscuit" and "Quito" when run alone, "My dog's name is Biscuit." and
    then "I live in Oslo." after the row with the model's own extraction). The reload happens
    here, outside every timing."""
    ref = client.resolve(model)
    client.engine(ref).unload(ref.target)
    client.chat(model, [Message("user", "Hi")], options={"num_predict": 1, "temperature": 0})


def stale_recalled(memory: Memory, recalled: list[Recalled], wrong: list[str]) -> int:
    """Recalled memories *of the user* that hold an old value or another person's. A friend's
    memory recalled as the friend's ("friend's home city: Porto") is right, not stale: it is not
    recalled as the user's value."""
    return sum(
        1
        for r in recalled
        if r.source == "memory"
        and memory.get(r.id).subject == SUBJECT_USER
        and any(contains_value(o, r.text) for o in wrong)
    )


@dataclass
class ExtractionScore:
    """Extraction against the truth, message by message. A stored memory is right when its value
    matches a fact stated in that message *about the same subject* (the user's city is not the
    friend's); right but under another slot than the fact's is counted as misfiled."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    misfiled: int = 0
    proposed: int = 0
    proposed_tp: int = 0
    wrong_subject: int = 0

    def add(self, facts: list[Any], extraction: Any, memory: Memory | None) -> None:
        if extraction is None:
            return
        truth = [f for f in facts if f.op != "delete"]
        got = [r.item for r in extraction.stored if r.action != "retracted"]

        def user(subject: str) -> bool:
            return subject == SUBJECT_USER

        def match(g: Any, f: Any) -> bool:
            return same_value(g.value, f.value) and user(g.subject) == user(f.subject)

        matched = [next((g for g in got if match(g, f)), None) for f in truth]
        self.tp += sum(m is not None for m in matched)
        self.fn += sum(m is None for m in matched)
        self.fp += sum(1 for g in got if not any(match(g, f) for f in truth))
        self.wrong_subject += sum(
            1 for g in got if not any(match(g, f) for f in truth) and any(same_value(g.value, f.value) for f in truth)
        )
        if memory is not None:
            for f, g in zip(truth, matched, strict=True):
                if g is not None and g.key != memory.slots.canonical(f.key):
                    self.misfiled += 1
        self.proposed += len(extraction.proposed)
        self.proposed_tp += sum(1 for p in extraction.proposed if any(same_value(p["value"], f.value) for f in truth))

    def summary(self) -> dict[str, Any]:
        tp, fp, fn = self.tp, self.fp, self.fn
        return {
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "stored": tp + fp,
            "true_facts": tp + fn,
            "misfiled": self.misfiled,
            "wrong_subject": self.wrong_subject,
            "raw_precision": self.proposed_tp / self.proposed if self.proposed else None,
            "raw_proposed": self.proposed,
        }


def supersession_accuracy(memory: Memory, synth: SynthConversation, upto: int) -> dict[str, Any]:
    """For each change to the user's facts, the memory at the end: an update's new value is
    current and the old one is not; a retracted value is not current; a value added to a
    multi-valued slot is current beside the others; another person's value is never the user's."""
    held = memory.current(SUBJECT_USER)

    def is_current(value: str) -> bool:
        return any(same_value(value, m.value) and contains_value(value, m.value) for m in held)

    counts = {"update": [0, 0], "retract": [0, 0], "add": [0, 0], "distractor": [0, 0]}
    stale = 0
    for t in synth.turns[:upto]:
        if t.kind not in counts:
            continue
        if t.kind == "update":
            ok = is_current(t.value or "") and not any(is_current(o) for o in t.old)
            stale += any(is_current(o) for o in t.old)
        elif t.kind == "retract":
            ok = not any(is_current(o) for o in t.old)
            stale += not ok
        elif t.kind == "add":
            earlier = [
                f.value
                for u in synth.turns[:upto]
                for f in u.facts
                if f.key == t.slot and f.subject == "user" and u.kind in ("state", "repeat")
            ]
            ok = is_current(t.value or "") and all(is_current(v) for v in earlier)
        else:
            ok = not is_current(t.value or "")
        counts[t.kind][0] += 1
        counts[t.kind][1] += ok
    changes = sum(n for k, (n, _) in counts.items() if k != "distractor")
    correct = sum(c for k, (_, c) in counts.items() if k != "distractor")
    return {
        "updates": changes,
        "correct": correct,
        "accuracy": correct / changes if changes else None,
        "old_still_current": stale,
        "by_kind": {k: {"n": n, "correct": c} for k, (n, c) in counts.items()},
    }


# --- documents -----------------------------------------------------------------------------------


def eval_retrieval(
    counter: TokenCounter,
    embedders: dict[str, Embedder | None],
    *,
    seed: int = 0,
    budgets: tuple[int, ...] = (512, 1024, 2048),
    ks: tuple[int, ...] = (1, 3, 5, 10),
    chunk_tokens: int = 200,
    questions: int = 40,
    ask: tuple[Client, str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evidence recall of document search on the synthetic corpus (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lmgauge-corpus-") as tmp:
        data = corpus(tmp, seed=seed, questions=questions)
        out: dict[str, Any] = {"documents": len(data.files), "questions": len(data.questions), "rows": rows}
        bm25_done = False
        index = None
        for emb_name, embedder in embedders.items():
            index = DocIndex.build(tmp, counter, embedder, chunk_tokens=chunk_tokens)
            out["chunks"] = len(index.chunks)
            evidence = [{c.id for c in index.chunks if q.evidence in c.text} for q in data.questions]
            assert all(evidence), "every question's evidence must be in a chunk"
            modes = [m for m in index.modes if m != "bm25" or not bm25_done]
            for mode in modes:
                row: dict[str, Any] = {"method": mode if mode == "bm25" else f"{mode} ({emb_name})"}
                hits_at: dict[int, int] = {k: 0 for k in ks}
                in_budget: dict[int, int] = {b: 0 for b in budgets}
                for qi, q in enumerate(data.questions):
                    if progress:
                        progress(row["method"], qi, len(data.questions))
                    ranked = [c for c, _ in index.search(q.question, k=max(max(ks), 50), mode=mode)]
                    for k in ks:
                        hits_at[k] += bool({c.id for c in ranked[:k]} & evidence[qi])
                    for b in budgets:
                        chosen, _ = pack(ranked, lambda c: c.tokens, b)
                        in_budget[b] += bool({c.id for c in chosen} & evidence[qi])
                n = len(data.questions)
                row.update({f"recall@{k}": hits_at[k] / n for k in ks})
                row.update({f"budget {b}": in_budget[b] / n for b in budgets})
                rows.append(row)
            bm25_done = True
        if ask is not None and index is not None:
            client, model = ask
            row = {"method": f"ask the model ({model})"}
            in_budget = {b: 0 for b in budgets}
            chose_right = 0
            evidence = [{c.id for c in index.chunks if q.evidence in c.text} for q in data.questions]
            for qi, q in enumerate(data.questions):
                if progress:
                    progress(row["method"], qi, len(data.questions))
                got = index.ask(client, model, q.question, max(budgets), counter)
                chose_right += q.path in got.documents
                by_doc = [c for p in got.documents for c in index.chunks if c.path == p]
                for b in budgets:
                    chosen, _ = pack(by_doc, lambda c: c.tokens, b)
                    in_budget[b] += bool({c.id for c in chosen} & evidence[qi])
            n = len(data.questions)
            row.update({f"recall@{k}": None for k in ks})
            row.update({f"budget {b}": in_budget[b] / n for b in budgets})
            row["right document"] = chose_right / n
            rows.append(row)
    return out


# --- the whole evaluation ----------------------------------------------------------------------


def evaluate(
    client: Client,
    model: str,
    *,
    seed: int = 0,
    turns: int = 100,
    conversations: int = 1,
    num_ctx: int = 2048,
    full_ctx: int | None = None,
    embedder: Embedder | None = None,
    extra_embedders: dict[str, Embedder] | None = None,
    strategies: tuple[str, ...] = (
        "keep-everything",
        "keep-everything (same window)",
        "truncation",
        "summarize",
        "hybrid",
        "hybrid (oracle memories)",
    ),
    answer: bool = True,
    retrieval: bool = True,
    ask: bool = True,
    doc_questions: int = 40,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the evaluation and return a JSON-able report."""
    t0 = time.perf_counter()
    base = client.settings.context
    if full_ctx is None:
        trained = _trained_context(client, model)
        full_ctx = min(trained or 8192, 8192)
    plan = {
        "keep-everything": ("none", full_ctx, None),
        "keep-everything (same window)": ("none", num_ctx, None),
        "truncation": ("trim", num_ctx, None),
        "summarize": ("summarize", num_ctx, None),
        "hybrid": ("hybrid", num_ctx, "model"),
        "hybrid (oracle memories)": ("hybrid", num_ctx, "oracle"),
        # Without "(changed from X on turn N)" on recalled memories: does the note help?
        "hybrid (without change notes)": ("hybrid", num_ctx, "model"),
        "hybrid (oracle memories without change notes)": ("hybrid", num_ctx, "oracle"),
    }
    report: dict[str, Any] = {
        "model": model,
        "seed": seed,
        "turns": turns,
        "conversations": conversations,
        "num_ctx": num_ctx,
        "full_ctx": full_ctx,
        "answer": answer,
        "runs": [],
    }
    for c in range(conversations):
        synth = conversation(seed + c, turns=turns)
        for name in strategies:
            strategy, ctx, memory_mode = plan[name]
            run = run_strategy(
                client,
                model,
                synth,
                name,
                strategy,
                ctx,
                base=base,
                embedder=embedder,
                memory_mode=memory_mode,
                answer=answer and name != "keep-everything (same window)",
                progress=progress,
                history_notes="without change notes" not in name,
            )
            report["runs"].append(
                {
                    "conversation": c,
                    "seed": seed + c,
                    **run.summary(),
                    "extraction": run.extraction,
                    "supersession": run.supersession,
                    "tokens": run.tokens,
                    "uncompacted": run.uncompacted,
                    "compaction_log": run.compactions,
                    "question_results": [asdict(q) for q in run.questions],
                    "added_ms": run.added_ms,
                    "background_ms": run.background_ms,
                    "answer_ms": run.answer_ms,
                    "refusal": run.refusal,
                }
            )
    report["strategies"] = _aggregate(report["runs"])
    if retrieval:
        counter = counter_for(client, model)
        embedders: dict[str, Embedder | None] = {"wordllama" if embedder else "none": embedder}
        embedders.update(extra_embedders or {})
        report["retrieval"] = eval_retrieval(
            counter,
            embedders,
            seed=seed,
            questions=doc_questions,
            ask=(client, model) if ask else None,
            progress=progress,
        )
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def _aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per strategy, pooled over conversations (rates weighted by questions)."""
    out = []
    for name in dict.fromkeys(r["name"] for r in runs):
        rs = [r for r in runs if r["name"] == name]
        qs = [q for r in rs for q in r["question_results"]]
        n = len(qs)
        ext = [r["extraction"] for r in rs if r["extraction"]]
        sup = [r["supersession"] for r in rs if r["supersession"]]
        first = rs[0]
        out.append(
            {
                "name": name,
                "strategy": first["strategy"],
                "num_ctx": first["num_ctx"],
                "questions": n,
                "in_prompt": sum(q["in_prompt"] for q in qs) / n if n else None,
                "answered": first["answered"],
                "correct": sum(q["correct"] for q in qs) / n if n and first["answered"] else None,
                "stale": sum(q["stale"] for q in qs) / n if n and first["answered"] else None,
                "tokens_max": max((r["tokens_max"] or 0) for r in rs),
                "tokens_mean_second_half": statistics.fmean(
                    [r["tokens_mean_second_half"] for r in rs if r["tokens_mean_second_half"] is not None] or [0]
                ),
                "refused_at": [r["refused_at"] for r in rs],
                "alert_turn": [r["alert_turn"] for r in rs],
                "alert_fraction": [r["alert_fraction"] for r in rs],
                "compactions": sum(r["compactions"] for r in rs),
                "compaction_ms_mean": statistics.fmean(
                    [r["compaction_ms_mean"] for r in rs if r["compaction_ms_mean"]] or [0]
                )
                or None,
                "extraction_precision": _pool(ext, "precision", "stored"),
                "extraction_recall": _pool(ext, "recall", "true_facts"),
                "supersession_accuracy": (
                    sum(s["correct"] for s in sup) / sum(s["updates"] for s in sup)
                    if sup and sum(s["updates"] for s in sup)
                    else None
                ),
                "stale_recalled": sum(r["stale_recalled"] for r in rs),
                "stale_current": sum(q["stale_current"] for q in qs) / n if n else None,
                "distracted": sum(q["distracted"] for q in qs) / n if n and first["answered"] else None,
                "misfiled": sum(e["misfiled"] for e in ext) if ext else None,
                "wrong_subject": sum(e["wrong_subject"] for e in ext) if ext else None,
                "changes": _changes(sup),
                "waits": sum(r["waits"] for r in rs),
                **_latency(rs),
                "limit": first["limit"],
            }
        )
    return out


def _changes(sup: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for s in sup:
        for kind, v in s.get("by_kind", {}).items():
            slot = out.setdefault(kind, {"n": 0, "correct": 0})
            slot["n"] += v["n"]
            slot["correct"] += v["correct"]
    return out


def _latency(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Added latency per turn (memory and compaction before the answer), p50/p95 with n, against
    the answer's own time (p50 of the answered questions); background work per turn beside it."""
    added = [x for r in rs for x in r.get("added_ms", [])]
    background = [x for r in rs for x in r.get("background_ms", [])]
    answers = [x for r in rs for x in r.get("answer_ms", [])]
    p95, answer = percentile(added, 95), percentile(answers, 50)
    return {
        "added_ms_p50": percentile(added, 50),
        "added_ms_p95": p95,
        "added_n": len(added),
        "answer_ms_p50": answer,
        "answer_n": len(answers),
        "added_p95_share": p95 / answer if p95 is not None and answer else None,
        "background_ms_p50": percentile(background, 50),
        "background_ms_p95": percentile(background, 95),
    }


def _pool(items: list[dict[str, Any]], rate: str, weight: str) -> float | None:
    total = sum(i[weight] for i in items if i[rate] is not None)
    return sum(i[rate] * i[weight] for i in items if i[rate] is not None) / total if total else None


def _trained_context(client: Client, model: str) -> int | None:
    ref = client.resolve(model)
    if ref.engine != "llamacpp":
        return None
    from ..models import inspect_gguf

    return inspect_gguf(ref.target).n_ctx_train
