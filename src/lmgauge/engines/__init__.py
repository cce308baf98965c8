"""Engines behind one protocol (base.Engine): embedded llama.cpp, Ollama, OpenAI-compatible."""
