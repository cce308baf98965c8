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
compactions and their cost, extraction precision/recall and supersession accuracy.

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
from ..store import Store
from .conversation import Conversation
from .memory import Memory, same_value
from .retrieval import DocIndex
from .search import pack
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
    seconds: float = 0.0
    answered: bool = True  # the model answered the questions (else only `in_prompt` is scored)

    def summary(self) -> dict[str, Any]:
        asked = [q for q in self.questions if q.answer is not None]
        n = len(self.questions)
        answered = self.answered
        comp_ms = [c["ms"] for c in self.compactions]
        return {
            "name": self.name, "strategy": self.strategy, "num_ctx": self.num_ctx, "limit": self.limit,
            "questions": n,
            "answered": answered,
            "in_prompt": sum(q.in_prompt for q in self.questions) / n if n else None,
            "correct": sum(q.correct for q in self.questions) / n if n and answered else None,
            "stale": sum(q.stale for q in self.questions) / n if n and answered else None,
            "asked": len(asked),
            "tokens_first": self.tokens[0] if self.tokens else None,
            "tokens_max": max(self.tokens) if self.tokens else None,
            "tokens_last": self.tokens[-1] if self.tokens else None,
            "tokens_mean_second_half": statistics.fmean(self.tokens[len(self.tokens) // 2:]) if self.tokens else None,
            "turns_run": len(self.tokens), "refused_at": self.refused_at,
            "alert_turn": self.alert_turn, "alert_fraction": self.alert_fraction,
            "compactions": len(self.compactions),
            "compaction_ms_mean": statistics.fmean(comp_ms) if comp_ms else None,
            "stale_recalled": self.stale_recalled, "seconds": round(self.seconds, 1),
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
) -> StrategyRun:
    """Replay one conversation under one strategy; see the module docstring."""
    t0 = time.perf_counter()
    cfg = _config(base, strategy, reserve)
    window = ContextWindow.for_model(client, model, num_ctx=num_ctx, reserve=reserve, alert_at=cfg.alert_at)
    run = StrategyRun(name, strategy, num_ctx, window.limit, answered=answer)
    with tempfile.TemporaryDirectory(prefix="lmgauge-eval-") as tmp:
        store = Store(Path(tmp) / "eval.db")
        memory = Memory(store, embedder) if memory_mode else None
        conv = Conversation(client, model, system=EVAL_SYSTEM, config=cfg, memory=memory, store=store,
                            options=ANSWER_OPTIONS, extract=memory_mode == "model", window=window)
        tp = fp = fn = proposed_tp = proposed_n = 0
        for i, t in enumerate(synth.turns, start=1):
            if progress:
                progress(name, i, len(synth.turns))
            try:
                prep = conv.prepare(t.user)
            except ContextOverflowError as exc:
                run.refused_at, run.refusal = i, str(exc)
                break
            run.tokens.append(prep.budget.used)
            run.uncompacted.append(prep.before.used)
            if prep.alert and run.alert_turn is None:
                run.alert_turn, run.alert_fraction = i, round(prep.before.fraction, 4)
            if prep.compaction:
                run.compactions.append({"turn": i, **prep.compaction.to_dict()})
            reply, result = t.assistant, None
            if t.kind == "question":
                q = QuestionResult(i, t.slot or "", t.value or "", t.old,
                                   contains_value(t.value or "", prep.prompt_text), prompt_tokens=prep.budget.used)
                run.stale_recalled += sum(1 for r in prep.recalled if r.source == "memory"
                                          and any(contains_value(o, r.text) for o in t.old))
                if answer:
                    result = client.chat(model, prep.messages, options={**ANSWER_OPTIONS, "num_ctx": num_ctx})
                    reply = q.answer = result.content
                    q.correct = contains_value(q.value, reply)
                    q.stale = not q.correct and any(contains_value(o, reply) for o in q.old)
                run.questions.append(q)
            turn = conv.commit(prep, reply, result)
            if memory is not None and memory_mode == "oracle":
                for f in t.facts:
                    memory.remember(f.kind, f.key, f.value, conversation=conv.id, source_turn=i, source_text=t.user)
            if turn.extraction is not None:  # score the model's extraction against the truth
                truth = list(t.facts)
                got = [r.item for r in turn.extraction.stored]
                matched = [any(same_value(g.value, f.value) for g in got) for f in truth]
                tp += sum(matched)
                fn += len(truth) - sum(matched)
                fp += sum(1 for g in got if not any(same_value(g.value, f.value) for f in truth))
                proposed_n += len(turn.extraction.proposed)
                proposed_tp += sum(1 for p in turn.extraction.proposed if any(same_value(p["value"], f.value) for f in truth))
        for q in [q for q in synth.questions if run.refused_at is not None and q[0] >= run.refused_at]:
            turn_no, t = q
            run.questions.append(QuestionResult(turn_no, t.slot or "", t.value or "", t.old, False))
        if memory_mode == "model":
            run.extraction = {
                "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
                "stored": tp + fp, "true_facts": tp + fn,
                "raw_precision": proposed_tp / proposed_n if proposed_n else None, "raw_proposed": proposed_n,
            }
        if memory is not None:
            run.supersession = supersession_accuracy(memory, synth, upto=len(run.tokens))
    run.seconds = time.perf_counter() - t0
    return run


def supersession_accuracy(memory: Memory, synth: SynthConversation, upto: int) -> dict[str, Any]:
    """For each slot that changed: is the new value current and the old one no longer current?"""
    current = memory.current()
    updated = [t for t in synth.turns[:upto] if t.kind == "update"]
    ok = stale = 0
    for t in updated:
        new_current = any(contains_value(t.value or "", m.value) for m in current)
        old_current = any(contains_value(o, m.value) for o in t.old for m in current)
        ok += new_current and not old_current
        stale += old_current
    return {"updates": len(updated), "correct": ok, "accuracy": ok / len(updated) if updated else None,
            "old_still_current": stale}


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
    strategies: tuple[str, ...] = ("keep-everything", "keep-everything (same window)", "truncation",
                                   "summarize", "hybrid", "hybrid (oracle memories)"),
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
    }
    report: dict[str, Any] = {"model": model, "seed": seed, "turns": turns, "conversations": conversations,
                              "num_ctx": num_ctx, "full_ctx": full_ctx, "answer": answer, "runs": []}
    for c in range(conversations):
        synth = conversation(seed + c, turns=turns)
        for name in strategies:
            strategy, ctx, memory_mode = plan[name]
            run = run_strategy(client, model, synth, name, strategy, ctx, base=base, embedder=embedder,
                               memory_mode=memory_mode, answer=answer and name != "keep-everything (same window)",
                               progress=progress)
            report["runs"].append({"conversation": c, "seed": seed + c, **run.summary(),
                                   "extraction": run.extraction, "supersession": run.supersession,
                                   "tokens": run.tokens, "uncompacted": run.uncompacted,
                                   "compaction_log": run.compactions,
                                   "question_results": [asdict(q) for q in run.questions],
                                   "refusal": run.refusal})
    report["strategies"] = _aggregate(report["runs"])
    if retrieval:
        counter = counter_for(client, model)
        embedders: dict[str, Embedder | None] = {"wordllama" if embedder else "none": embedder}
        embedders.update(extra_embedders or {})
        report["retrieval"] = eval_retrieval(counter, embedders, seed=seed, questions=doc_questions,
                                             ask=(client, model) if ask else None, progress=progress)
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
        out.append({
            "name": name, "strategy": first["strategy"], "num_ctx": first["num_ctx"], "questions": n,
            "in_prompt": sum(q["in_prompt"] for q in qs) / n if n else None,
            "answered": first["answered"],
            "correct": sum(q["correct"] for q in qs) / n if n and first["answered"] else None,
            "stale": sum(q["stale"] for q in qs) / n if n and first["answered"] else None,
            "tokens_max": max((r["tokens_max"] or 0) for r in rs),
            "tokens_mean_second_half": statistics.fmean([r["tokens_mean_second_half"] for r in rs
                                                         if r["tokens_mean_second_half"] is not None] or [0]),
            "refused_at": [r["refused_at"] for r in rs],
            "alert_turn": [r["alert_turn"] for r in rs], "alert_fraction": [r["alert_fraction"] for r in rs],
            "compactions": sum(r["compactions"] for r in rs),
            "compaction_ms_mean": statistics.fmean([r["compaction_ms_mean"] for r in rs if r["compaction_ms_mean"]] or [0]) or None,
            "extraction_precision": _pool(ext, "precision", "stored"),
            "extraction_recall": _pool(ext, "recall", "true_facts"),
            "supersession_accuracy": (sum(s["correct"] for s in sup) / sum(s["updates"] for s in sup)
                                      if sup and sum(s["updates"] for s in sup) else None),
            "stale_recalled": sum(r["stale_recalled"] for r in rs),
            "limit": first["limit"],
        })
    return out


def _pool(items: list[dict[str, Any]], rate: str, weight: str) -> float | None:
    total = sum(i[weight] for i in items if i[rate] is not None)
    return sum(i[rate] * i[weight] for i in items if i[rate] is not None) / total if total else None


def _trained_context(client: Client, model: str) -> int | None:
    ref = client.resolve(model)
    if ref.engine != "llamacpp":
        return None
    from ..models import inspect_gguf

    return inspect_gguf(ref.target).n_ctx_train

