"""The API-key check and the per-request metrics, as plain ASGI middleware.

The key is taken from the `X-API-Key` header only, never from the address (an address ends up in access logs,
proxies and browser history). The page at / is open (it holds no data); it asks for the key, keeps it in the
browser's localStorage and sends it as the header.

Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware wraps every request in
extra tasks and memory streams, which cost about as much as the rest of the HTTP path on a small CPU.
"""

from __future__ import annotations

import hmac
import time

from asset.serve.limits import send_json_error
from asset.serve.metrics import ServerMetrics

OPEN_ROUTES = {"/healthz", "/readyz", "/"}


class AccessMiddleware:
    def __init__(self, app, metrics: ServerMetrics, api_key: str | None, route_paths: set[str]) -> None:
        """route_paths: the app's route templates, the only paths used as metric labels (arbitrary paths
        sent by clients must not grow the metric without bound)."""
        self.app = app
        self.metrics = metrics
        self.api_key = api_key.encode() if api_key else None
        self.route_paths = route_paths

    @staticmethod
    def _key_given(scope) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name == b"x-api-key":
                return value
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"]
        if self.api_key and path not in OPEN_ROUTES:
            given = self._key_given(scope)
            if not given or not hmac.compare_digest(given, self.api_key):
                self.metrics.requests.labels(path if path in self.route_paths else "unmatched", "401").inc()
                return await send_json_error(send, 401, "unauthorized", "missing or wrong X-API-Key header")
        status = 500  # what an exception escaping the app becomes

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            label = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
