"""lmgauge: measure, size, route and serve local language models.

The public API, re-exported from the modules that define it.
"""

from .client import Client
from .config import Settings, load_settings
from .errors import (
    ContextOverflowError,
    EngineBusyError,
    EngineError,
    EngineUnavailableError,
    InsufficientMemoryError,
    InvalidOptionError,
    LmgaugeError,
    ModelFileError,
    RequestCancelled,
    UnknownModelError,
)
from .models import GGUFInfo, ModelRef, inspect_gguf, resolve
from .types import (
    ChatRequest,
    Chunk,
    Embeddings,
    GenerateRequest,
    LoadedModel,
    Message,
    ModelInfo,
    Options,
    Result,
    Timings,
)

__version__ = "0.1.0"

__all__ = [
    "ChatRequest",
    "Chunk",
    "Client",
    "ContextOverflowError",
    "Embeddings",
    "EngineBusyError",
    "EngineError",
    "EngineUnavailableError",
    "GGUFInfo",
    "GenerateRequest",
    "InsufficientMemoryError",
    "InvalidOptionError",
    "LmgaugeError",
    "LoadedModel",
    "Message",
    "ModelFileError",
    "ModelInfo",
    "ModelRef",
    "Options",
    "RequestCancelled",
    "Result",
    "Settings",
    "Timings",
    "UnknownModelError",
    "inspect_gguf",
    "load_settings",
    "resolve",
    "__version__",
]
