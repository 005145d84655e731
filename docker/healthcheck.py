#!/usr/bin/env python3
"""Container health check (standard library only): exit 0 when the service answers ready.

  healthcheck.py [triton]   Triton's GET /v2/health/ready on HTTP_PORT (every model loaded)
  healthcheck.py gateway    the gateway's GET /health on GATEWAY_PORT (503 while Triton is not ready)
"""

import os
import sys
import urllib.request

target = sys.argv[1] if len(sys.argv) > 1 else "triton"
if target == "gateway":
    url = f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8080')}/health"
elif target == "triton":
    url = f"http://127.0.0.1:{os.environ.get('HTTP_PORT', '8000')}/v2/health/ready"
else:
    sys.exit(f"healthcheck: unknown target {target!r} (triton or gateway)")
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as error:  # refused, timed out, 503: not ready
    print(f"healthcheck: {url}: {error}", file=sys.stderr)
    sys.exit(1)
