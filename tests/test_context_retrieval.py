"""Just-in-time documents: structure-aware chunks, a cached index, hybrid search that finds the
evidence, packing to a token budget, and the 'ask the model' strategy."""

from __future__ import annotations

import pytest

from lmgauge.client import Client
from lmgauge.context.retrieval import DocIndex, chunk_file
from lmgauge.context.search import HybridSearch, rrf
from lmgauge.context.synthetic import corpus
from lmgauge.context.tokens import ServerTokens
from lmgauge.embedding import WordLlamaEmbedder
from lmgauge.errors import InvalidOptionError
from support.standins import OllamaStandin

MARKDOWN = """# Falcon service

Falcon handles payments.

## Storage

Falcon stores its data in PostgreSQL in Frankfurt.

Backups run nightly.

## Security

Keys are rotated every 30 days.
"""

CODE = '''import os


def rotate(keys):
    """Rotate keys."""
    return keys[::-1]


class Vault:
    def get(self):
        return 1
'''


@pytest.fixture(scope="module")
def embedder():
    return WordLlamaEmbedder()


def test_markdown_chunks_follow_headings_with_their_path_as_title():
    _, chunks = chunk_file("falcon.md", MARKDOWN, ServerTokens(), chunk_tokens=200)
    assert [(c.title, c.start_line, c.end_line) for c in chunks] == [
        ("Falcon service", 1, 3),
        ("Falcon service > Storage", 5, 9),
        ("Falcon service > Security", 11, 13),
    ]
    assert chunks[1].text == "## Storage\n\nFalcon stores its data in PostgreSQL in Frankfurt.\n\nBackups run nightly."


def test_code_chunks_follow_top_level_definitions():
    _, chunks = chunk_file("util.py", CODE, ServerTokens(), chunk_tokens=200)
    assert [c.title for c in chunks] == ["util", "util > def rotate(keys)", "util > class Vault"]
    assert chunks[2].text.startswith("class Vault:") and chunks[2].end_line == 11


def test_no_chunk_exceeds_the_chunk_size():
    counter = ServerTokens()
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 40 for i in range(30))
    _, chunks = chunk_file("long.txt", text, counter, chunk_tokens=120)
    assert len(chunks) > 5 and all(counter.count_text(c.text) <= 120 for c in chunks)
    assert " ".join(c.text for c in chunks).count("Paragraph") == 30  # nothing lost


def test_the_index_is_cached_and_rebuilt_when_a_file_changes(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "falcon.md").write_text(MARKDOWN)
    (docs / "util.py").write_text(CODE)
    (docs / "image.png").write_bytes(b"\x89PNG\x00\x00")  # not a document: ignored
    (docs / "blob.txt").write_bytes(b"abc\x00def")  # binary: skipped, and said so
    cache = tmp_path / "cache"
    first = DocIndex.open(docs, ServerTokens(), embedder, cache_dir=cache)
    assert {d.path for d in first.documents} == {"falcon.md", "util.py"} and first.skipped == ["blob.txt: binary"]
    (saved,) = cache.glob("*/index.json")
    stamp = saved.stat().st_mtime_ns
    again = DocIndex.open(docs, ServerTokens(), embedder, cache_dir=cache)
    assert saved.stat().st_mtime_ns == stamp and len(again.chunks) == len(first.chunks)
    assert (again.vectors == first.vectors).all()
    (docs / "notes.md").write_text("# Notes\n\nNothing yet.\n")
    third = DocIndex.open(docs, ServerTokens(), embedder, cache_dir=cache)
    assert "notes.md" in {d.path for d in third.documents}


def test_an_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidOptionError, match="not a folder"):
        DocIndex.build(tmp_path / "nope", ServerTokens())
    with pytest.raises(InvalidOptionError, match="no documents"):
        DocIndex.build(tmp_path, ServerTokens())


def test_the_summary_fits_its_budget_and_says_what_it_left_out(tmp_path):
    data = corpus(tmp_path, seed=1, services=12)
    counter = ServerTokens()
    index = DocIndex.build(data.root, counter)
    full = index.summary(counter, 10_000)
    assert all(d.path in full for d in index.documents)
    short = index.summary(counter, 300)
    assert counter.count_text(short) <= 300 and "more" in short.splitlines()[-1]


def test_hybrid_search_finds_the_evidence_and_packs_within_budget(tmp_path, embedder):
    data = corpus(tmp_path, seed=2, services=10, questions=20)
    counter = ServerTokens()
    index = DocIndex.build(data.root, counter, embedder)
    found = 0
    for q in data.questions:
        got = index.retrieve(q.question, budget=1024)
        assert got.tokens == sum(c.tokens for c in got.chunks) <= 1024
        found += any(q.evidence in c.text for c in got.chunks)
    assert found >= 18  # the full figure is in `lmgauge eval context`; this guards regressions


def test_small_talk_loads_no_documents_when_a_threshold_is_set(tmp_path, embedder):
    data = corpus(tmp_path, seed=3, services=4)
    index = DocIndex.build(data.root, ServerTokens(), embedder)
    assert index.retrieve("hello!", budget=1000, min_similarity=0.5).chunks == []
    assert index.retrieve(data.questions[0].question, budget=1000, min_similarity=0.5).chunks


def test_rrf_rewards_agreement():
    fused = dict(rrf([[1, 2, 3], [3, 1, 4]]))
    assert max(fused, key=fused.get) == 1 and fused[3] > fused[2] and fused[4] > 0


def test_search_without_embeddings_is_bm25():
    index = HybridSearch(["the cat sat", "dogs bark loudly", "a cat and a dog"])
    assert index.modes == ("bm25",)
    assert [i for i, _ in index.search("cat", mode="hybrid")] == [0, 2] or [
        i for i, _ in index.search("cat", mode="hybrid")
    ] == [2, 0]


def test_ask_strategy_loads_the_documents_the_model_names(tmp_path, settings):
    data = corpus(tmp_path, seed=4, services=3)
    counter = ServerTokens()
    index = DocIndex.build(data.root, counter)
    with OllamaStandin() as server, Client(settings.model_copy(update={"ollama_host": server.url})) as client:
        got = index.ask(client, "ollama:standin", "Where does it store data?", budget=400, counter=counter)
        schema = server.requests[-1].body["format"]
    paths = [d.path for d in index.documents]
    assert schema["properties"]["documents"]["items"]["enum"] == paths  # only real paths can be named
    assert got.documents == [paths[0]]  # the stand-in names the first allowed value
    assert got.chunks and {c.path for c in got.chunks} == {paths[0]} and got.tokens <= 400
