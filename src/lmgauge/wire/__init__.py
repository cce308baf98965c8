"""The wire layer: the only code that builds or parses Ollama's and OpenAI's JSON.

Engines use it when they talk to upstream servers, the gateway when it serves clients, so a
field is spelled, defaulted and converted in exactly one place, in both directions:

- `ollama.py`  Ollama's /api/chat and /api/generate: messages, tools, `think`, the NDJSON
               stream objects and the final object with its timing fields (the one map from
               prompt_eval_count/eval_duration/... to `Timings`), embeddings.
- `openai.py`  OpenAI's /v1/chat/completions and /v1/completions: messages (tool calls with
               JSON-string arguments and ids, tool results linked by tool_call_id, content
               parts), tools and tool_choice, reasoning (reasoning_effort / reasoning_content),
               sampling parameters, SSE chunks (delta.tool_calls in fragments, as OpenAI's client
               assembles them) and final objects, usage, the one streamed-tool-call assembler.

lmgauge's own shapes are the dataclasses of `lmgauge.types`; a tool call is Ollama-shaped
({"function": {"name", "arguments": {...}}, "id"}), which is why Ollama's conversions are thin.
Everything a client sends is hostile: parsing raises `InvalidOptionError` naming the field.
"""
