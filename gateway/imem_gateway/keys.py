"""API keys: each maps to a tenant and its own rate limits.

Keys come from IMEM_API_KEYS (`key=tenant,key2=tenant2`) and/or a JSON file (IMEM_API_KEYS_FILE) that
holds only SHA-256 digests, so a leaked file gives no usable key. Plain SHA-256 suffices because keys
are long random strings (nothing to brute-force), and a lookup by digest compares no secret bytes.

    {"keys": [{"sha256": "<hex>", "tenant": "acme", "name": "acme-prod",
               "requests_per_minute": 600, "tokens_per_minute": 200000}]}
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_TENANT_BYTES = 256  # the memory model's limit on ids


class KeyConfigError(ValueError):
    """The key configuration is wrong; the message says where."""


@dataclass(frozen=True)
class ApiKey:
    digest: str
    tenant: str
    name: str
    requests_per_minute: int  # 0: unlimited
    tokens_per_minute: int  # 0: unlimited


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "imem-" + secrets.token_urlsafe(32)


def _tenant(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise KeyConfigError(f"{where}: tenant must be a non-empty string")
    if len(value.encode("utf-8")) > MAX_TENANT_BYTES:
        raise KeyConfigError(f"{where}: tenant is longer than {MAX_TENANT_BYTES} bytes")
    return value.strip()


def _limit(value, where: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KeyConfigError(f"{where}: {name} must be an integer >= 0 (0 means unlimited)")
    return value


def parse_env(text: str, rpm: int, tpm: int) -> list[ApiKey]:
    """`key=tenant,key2=tenant2` (the form of IMEM_API_KEYS); limits are the defaults."""
    keys = []
    for number, item in enumerate(filter(None, (p.strip() for p in text.split(","))), start=1):
        key, sep, tenant = item.rpartition("=")
        if not sep or not key.strip():
            raise KeyConfigError(f"IMEM_API_KEYS entry {number}: expected key=tenant")
        keys.append(ApiKey(digest(key.strip()), _tenant(tenant, f"IMEM_API_KEYS entry {number}"),
                           f"env-{number}", rpm, tpm))
    return keys


def parse_file(text: str, source: str, rpm: int, tpm: int) -> list[ApiKey]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise KeyConfigError(f"{source}: not valid JSON ({error.msg}, line {error.lineno})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeyConfigError(f'{source}: expected {{"keys": [...]}}')
    keys = []
    for number, entry in enumerate(entries, start=1):
        where = f"{source} key {number}"
        if not isinstance(entry, dict):
            raise KeyConfigError(f"{where}: must be an object")
        if "key" in entry:
            raise KeyConfigError(f"{where}: holds a plain key; store only its 'sha256' "
                                 "(imem gateway --new-key TENANT writes one)")
        hexdigest = str(entry.get("sha256", "")).lower()
        if not DIGEST.match(hexdigest):
            raise KeyConfigError(f"{where}: 'sha256' must be 64 hex digits")
        keys.append(ApiKey(hexdigest, _tenant(entry.get("tenant"), where), str(entry.get("name", f"key-{number}")),
                           _limit(entry.get("requests_per_minute", rpm), where, "requests_per_minute"),
                           _limit(entry.get("tokens_per_minute", tpm), where, "tokens_per_minute")))
    return keys


class KeyRing:
    def __init__(self, keys: list[ApiKey]):
        self.by_digest: dict[str, ApiKey] = {}
        for key in keys:
            if key.digest in self.by_digest:
                raise KeyConfigError(f"key {key.name} is configured twice")
            self.by_digest[key.digest] = key

    def __len__(self) -> int:
        return len(self.by_digest)

    def find(self, presented: str) -> ApiKey | None:
        return self.by_digest.get(digest(presented)) if presented else None


def add_to_file(path: Path, tenant: str, name: str = "") -> str:
    """Creates a key for `tenant`, stores its digest in `path` (created if absent), returns the key."""
    document = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"keys": []}
    key = new_key()
    document["keys"].append({"sha256": digest(key), "tenant": _tenant(tenant, "new key"),
                             "name": name or f"{tenant}-{len(document['keys']) + 1}"})
    parse_file(json.dumps(document), str(path), 0, 0)  # refuse to write a file the gateway would reject
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return key
