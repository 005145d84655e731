"""Gateway settings, all from the environment (the README's configuration table lists them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from imem_gateway.keys import ApiKey, KeyConfigError, parse_env, parse_file


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise KeyConfigError(f"{name} must be an integer, got {raw!r}") from None


def _triton_address(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and scheme != "grpc":
        raise KeyConfigError(f"the gateway talks to Triton over gRPC: use grpc://host:port, not {url!r}")
    return rest if sep else url


@dataclass
class Settings:
    triton_url: str = field(default_factory=lambda: os.environ.get("IMEM_URL")
                            or f"grpc://localhost:{os.environ.get('GRPC_PORT', '8001')}")
    host: str = field(default_factory=lambda: os.environ.get("GATEWAY_HOST", "0.0.0.0"))
    port: int = field(default_factory=lambda: _int("GATEWAY_PORT", 8080))
    model: str = field(default_factory=lambda: os.environ.get("IMEM_GATEWAY_MODEL", "imem-chat"))
    api_keys: str = field(default_factory=lambda: os.environ.get("IMEM_API_KEYS", ""))
    api_keys_file: str = field(default_factory=lambda: os.environ.get("IMEM_API_KEYS_FILE", ""))
    requests_per_minute: int = field(default_factory=lambda: _int("IMEM_RATE_LIMIT_RPM", 600))
    tokens_per_minute: int = field(default_factory=lambda: _int("IMEM_RATE_LIMIT_TPM", 200_000))
    timeout: float = field(default_factory=lambda: float(_int("IMEM_GATEWAY_TIMEOUT", 300)))
    # Larger request bodies are refused (413) before they are read: a whole resent history fits easily.
    max_body_bytes: int = field(default_factory=lambda: _int("IMEM_GATEWAY_MAX_BODY_BYTES", 4 * 2**20))

    @property
    def triton_address(self) -> str:
        return _triton_address(self.triton_url)

    def keys(self) -> list[ApiKey]:
        keys = parse_env(self.api_keys, self.requests_per_minute, self.tokens_per_minute)
        if self.api_keys_file:
            path = Path(self.api_keys_file)
            if not path.is_file():
                raise KeyConfigError(f"IMEM_API_KEYS_FILE {path} does not exist")
            keys += parse_file(path.read_text(encoding="utf-8"), str(path), self.requests_per_minute,
                               self.tokens_per_minute)
        return keys
