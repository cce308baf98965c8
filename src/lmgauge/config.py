"""Settings: defaults < config file (TOML) < environment (LMGAUGE_*) < explicit arguments.

The file is `$LMGAUGE_CONFIG`, else `~/.lmgauge/config.toml`. Nested sections map to
environment variables with a double underscore: `[aliases] "llama3.2:1b" = "smollm2"` in the
file; `LMGAUGE_NUM_CTX=8192` or `LMGAUGE_ALIASES='{"fast": "smollm2"}'` in the environment.

Example config.toml:

    default_model = "smollm2"
    num_ctx = 4096
    keep_alive = "10m"
    [aliases]
    "llama3.2:1b" = "smollm2"                        # any name -> any model lmgauge can run
    "qwen" = "~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    "big" = "ollama:qwen2.5:7b"                      # a model served by Ollama
    "vllm" = "openai:Qwen/Qwen2.5-7B@http://gpu-box:8000/v1"
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import InvalidOptionError
from .limits import MAX_BATCH, MAX_CONTEXT, max_threads

KVType = Literal["f16", "q8_0", "q4_0"]


def default_home() -> Path:
    return Path(os.environ.get("LMGAUGE_HOME", "~/.lmgauge")).expanduser()


def default_ollama_host() -> str:
    """Ollama's own OLLAMA_HOST convention: host[:port], scheme optional."""
    return normalize_host(os.environ.get("OLLAMA_HOST", "127.0.0.1:11434"), default_port=11434)


def normalize_host(value: str, default_port: int) -> str:
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = "http://" + value
    scheme, rest = value.split("://", 1)
    host = rest.split("/", 1)[0]
    if host.startswith("0.0.0.0"):
        host = host.replace("0.0.0.0", "127.0.0.1", 1)
    if ":" not in host.rsplit("]", 1)[-1]:
        host = f"{host}:{default_port}"
    return f"{scheme}://{host}"


def parse_duration(value: Any) -> float:
    """Ollama-style keep_alive: seconds as a number, or "5m", "1h30m", "300ms"; <0 = forever."""
    if isinstance(value, bool):
        raise InvalidOptionError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise InvalidOptionError(f"invalid duration {value!r}; use seconds or e.g. 30s, 5m, 1h")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


class ContextSettings(BaseModel):
    """`[context]` in config.toml (LMGAUGE_CONTEXT__STRATEGY=trim in the environment): how
    conversations are kept inside the model's window. See docs/context.md."""

    reserve: int = Field(512, ge=0)  # tokens kept free for the answer
    alert_at: float = Field(0.75, gt=0, le=1)  # share of the prompt budget that raises the alert
    # What a full conversation becomes: trim (drop old turns), summarize (running summary),
    # hybrid (summary + recent turns + facts from long-term memory), none (refuse at 100%).
    strategy: Literal["trim", "summarize", "hybrid", "none"] = "hybrid"
    compact_at: float = Field(0.75, gt=0, le=1)  # trigger: share of the prompt budget...
    compact_at_tokens: int | None = Field(None, gt=0)  # ...or this many prompt tokens...
    compact_at_messages: int | None = Field(None, gt=0)  # ...or this many messages
    target: float = Field(0.5, gt=0, lt=1)  # a compaction brings the prompt down to this share
    keep_turns: int = Field(4, ge=1)  # at most this many recent turns stay verbatim
    summary_tokens: int = Field(200, ge=16)  # the running summary's length limit
    memory_tokens: int = Field(256, ge=0)  # recalled memories per turn (and pinned facts)
    docs_tokens: int = Field(1024, ge=0)  # document excerpts per turn
    docs_summary_tokens: int = Field(256, ge=0)  # the document index summary in the system prompt
    chunk_tokens: int = Field(200, ge=32)  # target size of a document chunk
    # Embeddings for recall: "wordllama" (offline, ships in its wheel), "none" (BM25 only), or
    # any model lmgauge can run that embeds (a GGUF embedding model, ollama:nomic-embed-text).
    embed_model: str = "wordllama"
    summary_model: str | None = None  # the model that summarizes/extracts; default: the chat model
    # What the gateway's context guard does with a conversation over the window (None: the
    # gateway's own `[gateway] overflow` setting, which defaults to refuse).
    overflow: Literal["refuse", "compact"] | None = None

    @model_validator(mode="after")
    def _order(self) -> ContextSettings:
        if self.target >= self.compact_at:
            raise ValueError(f"target ({self.target}) must be below compact_at ({self.compact_at})")
        return self


class UpstreamSettings(BaseModel):
    """One model served by remote nodes: `[[gateway.upstreams]]` in the config file.

    [[gateway.upstreams]]
    model = "llama3.2:3b"                         # the name clients ask for
    kind = "ollama"                               # or "openai" (vLLM, llama-server, LM Studio)
    urls = ["http://gpu1:11434", "http://gpu2:11434"]
    target = "llama3.2:3b"                        # the nodes' own name (default: model)
    num_ctx = 8192                                # the window the context guard checks against
    tokenizer = "~/models/llama-3.2-3b.gguf"      # a local GGUF with the same vocabulary, for
                                                  # exact token counts before sending
    """

    model: str
    urls: list[str]
    kind: Literal["ollama", "openai"] = "ollama"
    target: str | None = None
    max_concurrency: int = Field(default=32, ge=1)  # in-flight requests per node
    num_ctx: int | None = Field(default=None, ge=16)
    tokenizer: str | None = None
    api_key: SecretStr | None = None  # kind "openai": sent as Authorization: Bearer (never logged)

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("an upstream needs at least one URL")
        return [v.rstrip("/") if "://" in v else "http://" + v.rstrip("/") for v in value]


class GatewaySettings(BaseModel):
    """`lmgauge serve`: the `[gateway]` section of the config file (env LMGAUGE_GATEWAY__*)."""

    host: str | None = None  # default: OLLAMA_HOST's host, else 127.0.0.1 (localhost only)
    port: int | None = Field(default=None, ge=0, le=65535)  # default: OLLAMA_HOST's port, else 11434
    api_key: str | None = None  # when set, every request but GET / needs Authorization: Bearer KEY
    # --- security (docs/security.md): defaults safe for a laptop; each widening is explicit ---
    # Let HTTP clients name files and `ollama:`/`openai:...@URL` models like the CLI does (a
    # file-existence oracle and SSRF for whoever reaches the gateway): only for a gateway only you reach.
    allow_any_model: bool = False
    # Host header values accepted besides localhost names, IP literals and this machine's name
    # (DNS rebinding defence); "*" accepts any.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Origins (web pages) allowed to call the gateway besides loopback ones, like OLLAMA_ORIGINS:
    # "https://app.example", "https://*.example", "*" (any). A request from any other Origin is refused.
    origins: list[str] = Field(default_factory=list)
    cors: bool = False  # answer CORS preflights and let allowed origins read responses
    # Listening beyond loopback without api_key is refused unless this is set (then warned loudly).
    allow_insecure: bool = False
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024)
    max_messages: int = Field(default=2048, ge=1)  # messages in one chat request
    max_prompt_chars: int = Field(default=2**20, ge=1)  # characters of text in one request (all fields)
    max_embed_inputs: int = Field(default=512, ge=1)  # inputs in one embedding request
    header_timeout: float = Field(default=10.0, gt=0)  # seconds to receive a request's headers
    body_timeout: float = Field(default=30.0, gt=0)  # seconds to receive a request's body
    max_queue: int = Field(default=512, ge=0)  # waiting requests per model beyond its concurrency
    request_timeout: float = Field(default=600.0, gt=0)  # seconds, whole request
    first_token_timeout: float | None = Field(default=None, gt=0)  # seconds; None = request_timeout
    shutdown_grace: float = Field(default=30.0, ge=0)  # seconds to finish in-flight requests
    health_interval: float = Field(default=5.0, gt=0)  # seconds between upstream health checks
    overflow: Literal["refuse", "compact"] = "refuse"  # used until a [context] section says otherwise
    log_requests: bool = True
    # Serve repeated deterministic requests (temperature 0 or a seed) from the response cache
    # (`[cache]` settings: exact + guarded semantic, SQLite or Redis). Off by default: a gateway
    # that answers from memory should be a decision.
    cache: bool = False
    monitor_samples: int = Field(default=2000, ge=10)  # rolling window by count ...
    monitor_seconds: float = Field(default=300.0, gt=0)  # ... and by time
    upstreams: list[UpstreamSettings] = Field(default_factory=list)


class RoutingSettings(BaseModel):
    """`[routing]`: which model answers a request sent to the model name `auto` (routing/)."""

    # Tier name -> model name, cheapest first (TOML and JSON keep the order). Empty: one tier,
    # the default model. E.g. {small = "smollm2", medium = "qwen-0.5b", large = "ollama:qwen2.5:7b"}
    tiers: dict[str, str] = Field(default_factory=dict)
    classifier: Literal["features", "llm"] = "features"
    # Below this confidence the router goes one tier up (a wrong "small" costs an answer; a wrong
    # "large" only costs time).
    confidence_threshold: float = Field(0.5, ge=0.0, le=1.0)
    escalate: bool = True  # retry on the next tier when an answer fails a check
    llm_model: str | None = None  # the LLM classifier's model; default: the cheapest tier
    llm_votes: int = Field(3, ge=1, le=9)  # samples whose agreement is the LLM classifier's confidence
    embedder: str = "wordllama"  # "wordllama" (offline, in its wheel) or an embedding model name
    calibrated: Path | None = None  # a router fitted by `lmgauge route calibrate`; default <home>/router.json


class CacheSettings(BaseModel):
    """`[cache]`: response caching (cache/)."""

    enabled: bool = True
    backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    ttl: float = 86400.0  # seconds an entry lives ("1h", "7d" style strings accepted as Ollama durations)
    max_entries: int = Field(10000, ge=1)
    semantic: bool = True  # also answer close paraphrases of a cached question
    similarity: float = Field(0.75, gt=0.0, le=1.0)  # minimum cosine similarity for a semantic hit (then the guards)
    embedder: str = "wordllama"

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float:
        return parse_duration(value)


class ResilienceSettings(BaseModel):
    """`[resilience]`: timeouts, retries, circuit breakers and fallbacks (resilience.py)."""

    connect_timeout: float = Field(10.0, gt=0)  # seconds to open a connection to a remote engine
    first_token_timeout: float = Field(120.0, gt=0)  # seconds from sending to the first token
    total_timeout: float = Field(600.0, gt=0)  # seconds for a whole answer
    retries: int = Field(2, ge=0)  # extra attempts on retryable errors (server down, busy, 5xx)
    backoff: float = Field(0.25, ge=0)  # first retry delay in seconds; doubles each time, with jitter
    backoff_max: float = Field(8.0, ge=0)
    breaker_failures: int = Field(3, ge=1)  # consecutive failures that open a model's breaker
    breaker_reset: float = Field(5.0, gt=0)  # seconds open before one trial request (half-open)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)  # model -> models to try next


class SpeculativeSettings(BaseModel):
    """`[speculative]`: speculative decoding in the embedded engine (engines/speculative.py), per
    model name (an alias counts, so one file can be benchmarked with and without it):

        [speculative.models]
        "qwen-1.5b" = "qwen-0.5b"    # a smaller model of the same family drafts
        "smollm2" = "lookup"         # drafts come from the prompt (prompt lookup), no second model
    """

    models: dict[str, str] = Field(default_factory=dict)  # model name -> draft model name, or "lookup"
    draft_max: int = Field(16, ge=1, le=64)  # most tokens drafted per step (the length adapts below it)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LMGAUGE_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default_factory=default_home)
    db: Path | None = None  # default: <home>/lmgauge.db
    default_model: str = "smollm2"
    aliases: dict[str, str] = Field(default_factory=dict)
    model_dirs: list[Path] = Field(default_factory=list)  # extra folders scanned for *.gguf

    # embedded engine
    num_ctx: int = Field(4096, ge=16, le=MAX_CONTEXT)  # like Ollama's default; capped at the model's trained context
    keep_alive: float = 300.0  # seconds a model stays loaded after its last request
    threads: int | None = Field(None, ge=1, le=max_threads())  # default: physical cores
    flash_attn: Literal["auto", "on", "off"] = "auto"
    kv_type: KVType = "f16"
    parallel: int = Field(1, ge=1, le=256)  # sequences decoded together in one batch (continuous batching)
    n_batch: int = Field(512, ge=1, le=MAX_BATCH)
    prefix_cache: bool = True  # reuse KV of prompt prefixes already computed (reported as cached)
    memory_limit: str | None = None  # e.g. "4GiB": refuse to load models estimated above it

    # remote engines
    ollama_host: str = Field(default_factory=default_ollama_host)
    request_timeout: float = 600.0  # seconds, for remote engines
    # Bearer key for `openai:NAME@URL` models (hosted OpenAI-compatible APIs); env
    # LMGAUGE_OPENAI_API_KEY. A SecretStr: never shown by repr, dumps or logs. OPENAI_API_KEY is
    # deliberately not read: it would go to whatever server an openai: model names.
    openai_api_key: SecretStr | None = None

    context: ContextSettings = Field(default_factory=ContextSettings)
    # `lmgauge serve`
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    resilience: ResilienceSettings = Field(default_factory=ResilienceSettings)
    speculative: SpeculativeSettings = Field(default_factory=SpeculativeSettings)

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("ollama_host", mode="before")
    @classmethod
    def _host(cls, value: Any) -> str:
        return normalize_host(str(value), default_port=11434)

    @field_validator("home", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def db_path(self) -> Path:
        return (self.db or self.home / "lmgauge.db").expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_path())
        return (init_settings, env_settings, toml)


def config_path() -> Path:
    return Path(os.environ.get("LMGAUGE_CONFIG") or default_home() / "config.toml").expanduser()


def load_settings(**overrides: Any) -> Settings:
    """Read settings; a malformed file or value becomes one clear InvalidOptionError."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise InvalidOptionError(
            f"invalid setting {where}: {first['msg']} (check {config_path()} and LMGAUGE_* variables)"
        ) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise InvalidOptionError(f"cannot read config {config_path()}: {exc}") from None
