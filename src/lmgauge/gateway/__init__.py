"""`lmgauge serve`: an Ollama- and OpenAI-compatible gateway in front of lmgauge's engines.

app.py         the FastAPI app, its lifespan and `serve()` (uvicorn)
core.py        one request's way through: resolve, context guard, admission, backend, record
backends.py    where answers come from: a library engine (embedded llama.cpp by default) or
               a pool of upstream Ollama / OpenAI-compatible nodes
ollama_api.py  Ollama's routes (the JSON shapes: lmgauge.wire.ollama)
openai_api.py  OpenAI's routes (the JSON shapes: lmgauge.wire.openai)
admission.py   per-model concurrency limit and bounded queue
metrics.py     Prometheus metrics (/metrics)
reqlog.py      the request log, written off the request path
health.py      whether an upstream node gets requests: real traffic, cooldown, test generations
disconnect.py  a client that hangs up before its answer cancels the work
shutdown.py    answers still running when the shutdown grace runs out end with an error event
guard.py       the context guard (exact tokens vs the window; refuse or compact)
http.py        request-body reading and error responses shared by both APIs
env.py         Ollama's environment variables mapped onto lmgauge settings
static/        the dashboard (one HTML page, no build step)
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
