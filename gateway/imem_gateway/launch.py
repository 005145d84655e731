"""Runs the gateway under uvicorn (what `imem gateway` calls)."""

from __future__ import annotations

import sys

from imem_gateway.keys import ApiKey, KeyConfigError, KeyRing, digest, new_key
from imem_gateway.settings import Settings


def key_ring(settings: Settings) -> KeyRing:
    keys = settings.keys()
    if not keys:
        # A gateway that accepts no key is useless and one that accepts any is unsafe: with nothing
        # configured, this run alone accepts a fresh random key, shown once.
        key = new_key()
        keys = [ApiKey(digest(key), "default", "generated", settings.requests_per_minute, settings.tokens_per_minute)]
        print(f"No API keys configured (IMEM_API_KEYS or IMEM_API_KEYS_FILE). For this run only, the key\n"
              f"  {key}\nis accepted, for tenant 'default'.", flush=True)
    return KeyRing(keys)


def run(settings: Settings) -> int:
    import logging

    import uvicorn

    from imem_gateway.app import create_app

    try:
        settings.triton_address  # noqa: B018 - validates the URL before anything starts
        ring = key_ring(settings)
    except KeyConfigError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 2
    tenants = sorted({key.tenant for key in ring.by_digest.values()})
    print(f"OpenAI-compatible gateway on http://{settings.host}:{settings.port}/v1 -> Triton {settings.triton_url}; "
          f"{len(ring)} key(s), tenant(s) {', '.join(tenants)}", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    uvicorn.run(create_app(settings, ring), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=10)
    return 0
