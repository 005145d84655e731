"""OpenAI-compatible HTTP gateway in front of the Triton `chat` ensemble: API keys mapped to tenants,
per-key rate limits, and the OpenAI request/response shapes, so the official SDK works unchanged."""
