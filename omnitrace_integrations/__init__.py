"""Adapters from OmniTrace to LangChain, LlamaIndex and OpenTelemetry (optional extras)."""
