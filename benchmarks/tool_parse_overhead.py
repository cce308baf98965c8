"""What tool-call parsing adds per streamed token, as a share of the decode time per token.

    flock /tmp/lmgauge-cpu.lock python benchmarks/tool_parse_overhead.py [--tokens 128] [--reps 5]

One run, side by side: SmolLM2 decodes an answer (temperature 0, tools offered with
tool_choice auto, so the lazy grammar watches every token); its engine clock gives the decode
time per token. The same token pieces are then replayed through what tool calling adds per
token: LazyGrammar.observe (on the decode thread: the token's text and the trigger check) and
ToolCallParser.feed + ThinkingSplitter.feed (on the caller's side). Target: < 2% of decode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import use_repo  # noqa: E402

use_repo()

from lmgauge.config import Settings  # noqa: E402
from lmgauge.engines import toolcalls  # noqa: E402
from lmgauge.engines.base import collect  # noqa: E402
from lmgauge.engines.llamacpp import LlamaCppEngine, make_template, tokenize  # noqa: E402
from lmgauge.engines.thinking import ThinkingSplitter  # noqa: E402
from lmgauge.models import inspect_gguf, smollm2_path  # noqa: E402
from lmgauge.types import ChatRequest, Message, Options  # noqa: E402

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    model = str(smollm2_path())
    engine = LlamaCppEngine(Settings(keep_alive=-1))
    try:
        request = lambda: ChatRequest(  # noqa: E731  a short factory, read where it is used
            model=model,
            messages=[Message("user", "Write a short story about a lighthouse.")],
            tools=TOOLS,
            options=Options(temperature=0, num_predict=args.tokens, seed=1),
        )
        collect(engine.chat(request()))  # warm-up (load, caches), excluded
        decode_ns, text = [], ""
        for _ in range(args.reps):
            result = collect(engine.chat(request()))
            t = result.timings
            decode_ns.append(t.eval_ns / max(t.output_tokens - 1, 1))
            text = result.content
        vocab = engine._vocab(model)
        tokens = tokenize(vocab, text, False)
        template = make_template(inspect_gguf(model), vocab)
        syntax = toolcalls.syntax_for(template)
        grammar = toolcalls.call_grammar(TOOLS, syntax, lazy=True)
        pieces = [engine.detokenize(model, [tok]) for tok in tokens]
        per_token = []
        for _ in range(args.reps):
            lazy = toolcalls.LazyGrammar(vocab, grammar, syntax)
            lazy.done = False
            parse, split = toolcalls.ToolCallParser(syntax, {"get_weather"}), ThinkingSplitter()
            t0 = time.perf_counter_ns()
            for tok, piece in zip(tokens, pieces, strict=True):
                lazy.done = False  # keep watching: the worst case, a trigger check on every token
                lazy.observe(tok)
                _, answer = split.feed(piece)
                parse.feed(answer)
            per_token.append((time.perf_counter_ns() - t0) / len(tokens))
    finally:
        engine.close()
    decode = statistics.median(decode_ns)
    added = statistics.median(per_token)
    print(f"tokens per answer: {len(tokens)}, reps: {args.reps}")
    print(f"decode time per token (engine clock, median): {decode / 1e6:.3f} ms")
    print(f"tool parsing + lazy-trigger check per token (median): {added / 1e3:.2f} us")
    print(f"added share of decode time: {added / decode:.3%} (target < 2%)")


if __name__ == "__main__":
    main()
