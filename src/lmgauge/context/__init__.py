"""Context management: keep a conversation inside the model's window without losing what matters.

- tokens.py      exact prompt token counts (the model's tokenizer and chat template)
- window.py      the budget: ContextWindow.check(messages) -> Budget; alert at 75%, refusal at 100%
- compaction.py  compact(messages, strategy, window) -> CompactionResult (trim, summarize, hybrid)
- memory.py      long-term memory: canonical slots with add/update/delete, history, archived turns, recall
- slots.py       the slot vocabulary and the canonicalisation of attribute names (words, then embeddings)
- background.py  extraction and compaction after the answer, off the critical path
- retrieval.py   just-in-time documents: DocIndex over a folder, chunks packed to a budget
- search.py      BM25 + embeddings fused by reciprocal rank fusion; packing to a token budget
- embeddings.py  offline embeddings (wordllama) or any embedding model the Client runs
- conversation.py  a chat session that uses all of the above, turn by turn
- synthetic.py, evaluation.py  `lmgauge eval context`: the seeded offline evaluation
"""

import logging

from ..embedding import Embedder, make_embedder
from .compaction import CompactionResult, Summarizer, compact, compactions, should_compact, turn_blocks
from .conversation import Conversation, Prepared, Turn
from .memory import Extractor, Memory, MemoryItem, Recalled
from .retrieval import DocChunk, DocIndex, Retrieval
from .search import HybridSearch, pack, rrf
from .tokens import GGUFTokens, ServerTokens, TokenCounter, counter_for
from .window import Budget, ContextWindow

# A library does not print: warnings reach the user through Turn.warnings (the CLI shows them),
# and through logging only where the application configures it (LMGAUGE_LOG=warning).
logging.getLogger("lmgauge.context").addHandler(logging.NullHandler())

__all__ = [
    "Budget",
    "CompactionResult",
    "ContextWindow",
    "Conversation",
    "DocChunk",
    "DocIndex",
    "Embedder",
    "Extractor",
    "GGUFTokens",
    "HybridSearch",
    "Memory",
    "MemoryItem",
    "Prepared",
    "Recalled",
    "Retrieval",
    "ServerTokens",
    "Summarizer",
    "TokenCounter",
    "Turn",
    "compact",
    "compactions",
    "counter_for",
    "make_embedder",
    "pack",
    "rrf",
    "should_compact",
    "turn_blocks",
]
