"""Just-in-time documents: a folder indexed into chunks; the prompt carries only the index's
summary, and the chunks a message needs are found by hybrid search and packed to a budget.

    index = DocIndex.open("docs/", counter, embedder, cache_dir=settings.home / "docs")
    index.summary(counter, 256)          # what the system prompt says is available
    index.retrieve("how are API keys rotated?", budget=1024)   # -> Retrieval(chunks, tokens)

Chunks follow the structure of each file: Markdown by heading (the heading path is the chunk's
title), code by top-level definition, text by paragraph; each is at most `chunk_tokens` long
(counted with the model's tokenizer). A chunk is searched as "path > title" + its text, so a
section that never repeats its document's name is still found by that name.

The seed's strategy (show the model the list of documents and let it pick) is kept as `ask`,
with the choice constrained by a JSON schema whose enum is the list of paths, and compared with
search in `lmgauge eval context`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..embedding import Embedder
from ..errors import InvalidOptionError, LmgaugeError
from ..types import Message
from .compaction import split_text
from .search import HybridSearch, Mode, pack
from .tokens import TokenCounter

if TYPE_CHECKING:
    from ..client import Client

log = logging.getLogger("lmgauge.context")

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".org", ".adoc", ".text"}
CODE_SUFFIXES = {
    ".py",
    ".js",
    ".jsx",
    ".ts",
    ".tsx",
    ".go",
    ".rs",
    ".java",
    ".kt",
    ".scala",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".cs",
    ".rb",
    ".php",
    ".sh",
    ".swift",
    ".lua",
    ".sql",
    ".toml",
    ".yaml",
    ".yml",
}
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", "dist", "build"}
MAX_FILE_BYTES = 2_000_000
INDEX_VERSION = 1

_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
_DEFINITION = re.compile(
    r"^(?:async\s+)?(?:def|class|function|func|fn|pub\s+fn|impl|struct|interface|type|const|"
    r"export\s+\w+|public\s+\w+|private\s+\w+)\b\s*([A-Za-z_][\w.]*)?"
)


@dataclass
class DocChunk:
    id: int
    path: str  # relative to the indexed folder
    start_line: int  # 1-based, inclusive
    end_line: int
    title: str  # "Document title > Section" or "path > symbol"
    text: str
    tokens: int  # of the chunk as it goes into the prompt (header included)

    @property
    def header(self) -> str:
        return f"[{self.path}:{self.start_line}-{self.end_line}] {self.title}"

    @property
    def search_text(self) -> str:
        return f"{self.path} > {self.title}\n{self.text}"

    def prompt_text(self) -> str:
        return f"{self.header}\n{self.text.strip()}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Document:
    path: str
    title: str
    chunks: int
    tokens: int


@dataclass
class Retrieval:
    """Chunks loaded for one query, and what they cost."""

    chunks: list[DocChunk]
    tokens: int
    mode: str
    ms: float
    documents: list[str] = field(default_factory=list)  # for `ask`: the documents the model chose
    warnings: list[str] = field(default_factory=list)

    def block(self) -> str:
        return docs_block(self.chunks)


def docs_block(chunks: list[DocChunk]) -> str:
    if not chunks:
        return ""
    return "Excerpts from the documents:\n\n" + "\n\n".join(c.prompt_text() for c in chunks)


# --- chunking ----------------------------------------------------------------------------------


@dataclass
class _Unit:
    start: int
    end: int
    title: str
    lines: list[str]


def _units(path: str, text: str) -> tuple[str, list[_Unit]]:
    """(document title, structural units): Markdown paragraphs titled by their heading path,
    code by top-level definition, text by paragraph. Each unit is a run of lines."""
    lines = text.splitlines()
    suffix = Path(path).suffix.lower()
    markdown, code = suffix in (".md", ".markdown"), suffix in CODE_SUFFIXES
    doc_title = Path(path).stem.replace("_", " ").replace("-", " ")
    if markdown:
        first = next((m.group(2) for m in map(_HEADING.match, lines) if m and len(m.group(1)) == 1), None)
        doc_title = first or doc_title
    units: list[_Unit] = []
    current: _Unit | None = None
    headings: list[str] = []
    for n, line in enumerate(lines, start=1):
        blank = not line.strip()
        boundary = False
        title = current.title if current else (" > ".join(headings) or doc_title)
        if markdown:
            m = _HEADING.match(line)
            if m:
                headings = headings[: len(m.group(1)) - 1] + [m.group(2)]
                boundary, title = True, " > ".join(headings)
            elif blank:  # a paragraph ends; the next one starts a unit under the same heading
                if current is not None:
                    units.append(current)
                current = None
                continue
        elif code:
            after_blank = current is None or not current.lines[-1].strip()
            m = _DEFINITION.match(line)
            if m and after_blank:
                boundary, title = True, line.strip().rstrip(":{").strip()[:80]
        elif blank:
            if current is not None:
                units.append(current)
            current = None
            continue
        if boundary and current is not None:
            units.append(current)
            current = None
        if current is None:
            if blank:
                continue
            current = _Unit(n, n, title, [])
        current.lines.append(line)
        current.end = n
    if current is not None:
        units.append(current)
    return doc_title, [u for u in units if any(s.strip() for s in u.lines)]


def chunk_file(
    path: str, text: str, counter: TokenCounter, chunk_tokens: int, first_id: int = 0
) -> tuple[str, list[DocChunk]]:
    """Split one file into chunks of at most `chunk_tokens` (units are merged while they share
    a title and fit; a unit too long is cut at line ends)."""
    doc_title, units = _units(path, text)
    chunks: list[DocChunk] = []

    def add(start: int, end: int, title: str, body: str) -> None:
        full_title = title if title.startswith(doc_title) or title == doc_title else f"{doc_title} > {title}"
        chunk = DocChunk(first_id + len(chunks), path, start, end, full_title, body.strip("\n"), 0)
        chunk.tokens = counter.count_text(chunk.prompt_text() + "\n\n")
        chunks.append(chunk)

    def joined(a: _Unit, b: _Unit) -> _Unit:
        gap = [""] if b.start > a.end + 1 else []  # keep the blank line between paragraphs
        return _Unit(a.start, b.end, a.title, a.lines + gap + b.lines)

    pending: _Unit | None = None
    for unit in units:
        if pending is not None:
            merged = joined(pending, unit)
            if unit.title == pending.title and counter.count_text("\n".join(merged.lines)) <= chunk_tokens:
                pending = merged
                continue
            add(pending.start, pending.end, pending.title, "\n".join(pending.lines))
            pending = None
        body = "\n".join(unit.lines)
        if counter.count_text(body) <= chunk_tokens:
            pending = unit
            continue
        line_no = unit.start
        for piece in split_text(body, lambda t: counter.count_text(t) <= chunk_tokens):
            n_lines = piece.count("\n") + (0 if piece.endswith("\n") else 1)
            add(line_no, line_no + n_lines - 1, unit.title, piece)
            line_no += piece.count("\n")
    if pending is not None:
        add(pending.start, pending.end, pending.title, "\n".join(pending.lines))
    return doc_title, chunks


def list_files(root: Path) -> list[Path]:
    """Text, Markdown and code files under root (hidden and build folders skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if not f.startswith(".") and p.suffix.lower() in TEXT_SUFFIXES | CODE_SUFFIXES:
                found.append(p)
    return found


# --- the index ---------------------------------------------------------------------------------


class DocIndex:
    def __init__(
        self,
        root: Path,
        documents: list[Document],
        chunks: list[DocChunk],
        embedder: Embedder | None,
        vectors: np.ndarray | None,
        skipped: list[str] | None = None,
    ):
        self.root = root
        self.documents = documents
        self.chunks = chunks
        self.embedder = embedder
        self.skipped = skipped or []
        self._search = HybridSearch([c.search_text for c in chunks], embedder, vectors)

    @property
    def vectors(self) -> np.ndarray | None:
        return self._search.vectors

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The search modes this index supports (BM25 only without embeddings)."""
        return self._search.modes

    @classmethod
    def build(
        cls,
        root: str | Path,
        counter: TokenCounter,
        embedder: Embedder | None = None,
        chunk_tokens: int = 200,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> DocIndex:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InvalidOptionError(f"--docs {root} is not a folder")
        files = list_files(root)
        if not files:
            raise InvalidOptionError(
                f"no documents in {root} (looked for {', '.join(sorted(TEXT_SUFFIXES))} and code files)"
            )
        documents: list[Document] = []
        chunks: list[DocChunk] = []
        skipped: list[str] = []
        for i, path in enumerate(files):
            rel = path.relative_to(root).as_posix()
            if progress:
                progress(i, len(files), rel)
            try:
                data = path.read_bytes()
            except OSError as exc:
                skipped.append(f"{rel}: {exc.strerror}")
                continue
            if len(data) > MAX_FILE_BYTES or b"\x00" in data[:8192]:
                skipped.append(f"{rel}: {'too large' if len(data) > MAX_FILE_BYTES else 'binary'}")
                continue
            text = data.decode("utf-8", "replace")
            title, file_chunks = chunk_file(rel, text, counter, chunk_tokens, first_id=len(chunks))
            if file_chunks:
                chunks.extend(file_chunks)
                documents.append(Document(rel, title, len(file_chunks), sum(c.tokens for c in file_chunks)))
        if progress:
            progress(len(files), len(files), "embedding")
        for s in skipped:
            log.warning("not indexed: %s", s)
        return cls(root, documents, chunks, embedder, None, skipped)

    @classmethod
    def open(
        cls,
        root: str | Path,
        counter: TokenCounter,
        embedder: Embedder | None = None,
        chunk_tokens: int = 200,
        cache_dir: Path | None = None,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> DocIndex:
        """The index of a folder, rebuilt only when a file changed (cached under cache_dir)."""
        root = Path(root).expanduser().resolve()
        if cache_dir is None or not root.is_dir():
            return cls.build(root, counter, embedder, chunk_tokens, progress)
        manifest = {p.relative_to(root).as_posix(): [p.stat().st_mtime_ns, p.stat().st_size] for p in list_files(root)}
        ident = json.dumps(
            [
                INDEX_VERSION,
                str(root),
                getattr(counter, "path", type(counter).__name__),
                embedder.name if embedder else None,
                chunk_tokens,
            ]
        )
        folder = Path(cache_dir).expanduser() / hashlib.sha256(ident.encode()).hexdigest()[:16]
        try:
            saved = json.loads((folder / "index.json").read_text())
            if saved["manifest"] == manifest and saved["ident"] == ident:
                vectors = np.load(folder / "vectors.npy") if embedder else None
                return cls(
                    root,
                    [Document(**d) for d in saved["documents"]],
                    [DocChunk(**c) for c in saved["chunks"]],
                    embedder,
                    vectors,
                    saved.get("skipped"),
                )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache yet, or an unreadable one: rebuild
        index = cls.build(root, counter, embedder, chunk_tokens, progress)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if index.vectors is not None:
                np.save(folder / "vectors.npy", index.vectors)
            tmp = folder / "index.json.tmp"  # written whole then renamed: a crash leaves no half index
            tmp.write_text(
                json.dumps(
                    {
                        "ident": ident,
                        "manifest": manifest,
                        "skipped": index.skipped,
                        "documents": [asdict(d) for d in index.documents],
                        "chunks": [c.to_dict() for c in index.chunks],
                    }
                )
            )
            tmp.replace(folder / "index.json")
        except OSError as exc:
            log.warning("could not cache the document index in %s: %s", folder, exc)
        return index

    # --- what the prompt carries -----------------------------------------------------------------
    def summary(self, counter: TokenCounter, budget: int) -> str:
        """The index as the system prompt shows it: one line per document, within `budget`
        tokens; when they do not all fit, the last line says how many were left out."""
        head = (
            f"You can consult {len(self.documents)} documents ({len(self.chunks)} sections). "
            "Relevant excerpts are added to the user's messages when needed:"
        )
        lines = [f"- {d.path}: {d.title}" for d in self.documents]
        used = counter.count_text(head + "\n")
        shown = []
        for i, line in enumerate(lines):
            cost = counter.count_text(line + "\n")
            left = len(lines) - i - 1
            # keep room for the "... and N more" line unless this is the last document
            room_for_more = counter.count_text(f"- ... and {left} more") if left else 0
            if used + cost + room_for_more > budget:
                shown.append(f"- ... and {left + 1} more")
                break
            shown.append(line)
            used += cost
        return "\n".join([head] + shown)

    def search(self, query: str, k: int = 5, mode: Mode = "hybrid") -> list[tuple[DocChunk, float]]:
        return [(self.chunks[i], s) for i, s in self._search.search(query, k, mode)]

    def retrieve(
        self, query: str, budget: int, mode: Mode = "hybrid", k: int = 50, min_similarity: float | None = None
    ) -> Retrieval:
        """The best chunks for `query`, packed into `budget` tokens (best first). With
        `min_similarity`, a chunk must share a term with the query (BM25) or be at least that
        similar (cosine) to be loaded at all: small talk loads nothing."""
        t0 = time.perf_counter()
        hits = self.search(query, k, mode)
        if min_similarity is not None:
            lexical = {i for i, _ in self._search.bm25(query, k)}
            dense = {i for i, s in self._search.dense(query, k) if s >= min_similarity}
            hits = [(c, s) for c, s in hits if c.id in lexical or c.id in dense]
        chosen, used = pack([c for c, _ in hits], lambda c: c.tokens, budget)
        return Retrieval(chosen, used, mode, (time.perf_counter() - t0) * 1000)

    def ask(
        self,
        client: Client,
        model: str,
        query: str,
        budget: int,
        counter: TokenCounter,
        options: dict[str, Any] | None = None,
        summary_tokens: int = 1024,
    ) -> Retrieval:
        """The seed's strategy: the model reads the list of documents and names the ones it
        needs (constrained to real paths by a JSON schema); their chunks are loaded in order
        until the budget is full."""
        t0 = time.perf_counter()
        paths = [d.path for d in self.documents]
        schema = {
            "type": "object",
            "properties": {
                "documents": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "string", "enum": paths}}
            },
            "required": ["documents"],
        }
        messages = [
            Message(
                "system",
                self.summary(counter, summary_tokens) + "\n\nName the documents (at most 3) "
                'that answer the question, as JSON: {"documents": [paths]}.',
            ),
            Message("user", query),
        ]
        warnings: list[str] = []
        chosen_docs: list[str] = []
        try:
            result = client.chat(
                model,
                messages,
                format=schema,
                options={"temperature": 0, "seed": 3, "num_predict": 120, **(options or {})},
            )
            data = json.loads(result.content)
            chosen_docs = [p for p in data.get("documents", []) if p in paths]
        except (ValueError, AttributeError, LmgaugeError) as exc:
            warnings.append(f"the model did not name documents ({exc})")
        by_doc = [c for p in dict.fromkeys(chosen_docs) for c in self.chunks if c.path == p]
        picked, used = pack(by_doc, lambda c: c.tokens, budget)
        return Retrieval(
            picked, used, "ask", (time.perf_counter() - t0) * 1000, list(dict.fromkeys(chosen_docs)), warnings
        )
