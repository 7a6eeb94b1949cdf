"""Pure-ASGI middleware: request id and API-key auth; CORS when origins are configured.

`GatewayMiddleware`: one class, two steps, no per-request objects beyond a wrapped
`send`. (The concurrency cap is the routes': it counts requests being served, not
clients still sending a body.) `CORSMiddleware` sits outside it, and only when
`server.cors_origins` names an origin.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import re
import time
from typing import Any

from gateway.errors import GatewayError, Unauthorized
from gateway.routes import reject

log = logging.getLogger("toolgate")

_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class GatewayMiddleware:
    """Wraps the Starlette app; `direct` routes (the chat endpoints) skip its routing."""

    def __init__(
        self,
        app: Any,
        *,
        api_keys: tuple[str, ...] = (),
        direct: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.names = {_tag(key): f"key{i}" for i, key in enumerate(self.api_keys, 1)}
        self.direct = direct or {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = b""
        auth = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SAFE_ID.fullmatch(value):
                request_id = value
            elif name in (b"authorization", b"api-key"):
                auth = value
        request_id = request_id or b"%032x" % random.getrandbits(128)
        scope["request_id"] = request_id.decode()
        started = False

        async def send_with_id(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        path = scope["path"]
        if path in OPEN_PATHS:
            return await self.app(scope, receive, send_with_id)
        owner = self._owner(auth) if self.api_keys else ""
        if owner is None:
            return await reject(send_with_id, Unauthorized("Invalid or missing API key for this gateway."), scope, time.perf_counter())
        # Who stored a response may read it back: an opaque tag of the key, never the key.
        scope["owner"] = owner
        if owner:
            scope["key_name"] = self.names[owner]  # for the log: the key's place in the list
        app = self.direct.get(path) if scope["method"] == "POST" else None
        try:
            await (app or self.app)(scope, receive, send_with_id)
        except Exception:
            # The one place an unexpected failure becomes a response: OpenAI shape, no traceback.
            log.exception("unhandled error serving %s", path)
            if not started:
                await reject(send_with_id, GatewayError("The gateway failed to handle this request.", code="internal_error"), scope, time.perf_counter())

    def _owner(self, header: bytes) -> str | None:
        """The owner tag of the key the header carries; None when it carries none of ours."""
        token = header[7:].strip() if header[:7].lower() == b"bearer " else header.strip()
        # Compare against every key, always, so timing tells nothing about which matched.
        found: bytes | None = None
        for key in self.api_keys:
            if hmac.compare_digest(token, key):
                found = key
        return None if found is None else _tag(found)


def _tag(key: bytes) -> str:
    return hashlib.sha256(b"toolgate-owner:" + key).hexdigest()[:32]


_CORS_METHODS = b"GET, POST, DELETE, OPTIONS"
# What a browser script may read of a response: the request id and the loop's facts.
_CORS_EXPOSED = b"x-request-id, x-toolgate-rounds, x-toolgate-tool-calls, retry-after, x-should-retry"
_TOKENS = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:[ \t]*,[ \t]*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")
CORS_MAX_AGE_S = 600


class CORSMiddleware:
    """Browser access for the configured origins (`"*"`: any).

    Outermost, so a preflight never meets the key check (browsers send no Authorization
    with it), and every answer to an allowed origin, errors included, carries what a
    browser needs to read it. Another origin gets no CORS headers at all, so the browser
    refuses it. Credentials (cookies) are never allowed: the gateway's keys are headers.
    """

    def __init__(self, app: Any, *, origins: tuple[str, ...]) -> None:
        self.app = app
        self.any = "*" in origins
        self.origins = frozenset(o.encode() for o in origins)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origin = method = asked = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                method = value
            elif name == b"access-control-request-headers":
                asked = value.strip()
        if origin is None or not (self.any or origin in self.origins):
            return await self.app(scope, receive, send)
        allowed = [(b"access-control-allow-origin", b"*" if self.any else origin), (b"vary", b"origin")]
        if scope["method"] == "OPTIONS" and method is not None:
            headers = [*allowed, (b"access-control-allow-methods", _CORS_METHODS), (b"access-control-max-age", b"%d" % CORS_MAX_AGE_S)]
            if asked and _TOKENS.fullmatch(asked):
                headers.append((b"access-control-allow-headers", asked))
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        allowed.append((b"access-control-expose-headers", _CORS_EXPOSED))

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *allowed]
            await send(message)

        await self.app(scope, receive, send_with_cors)
