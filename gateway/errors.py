"""The one error tree, and the one OpenAI error envelope.

::

    GatewayError (status, type, code, param)      -> {"error": {...}} at `status`
    ├── InvalidRequest          400 invalid_request_error
    │   ├── RequestTooLarge     413
    │   ├── Unprocessable       422 (an upstream's 422, kept)
    │   ├── TooLargeToStore     413 (one response is larger than the store's cap)
    │   ├── NotFound            404 not_found (a stored response or item)
    │   ├── BodyTimeout         408 (the body did not arrive in time)
    │   └── ClientGone          499 (logged; nobody is left to answer)
    ├── Unauthorized            401 authentication_error
    ├── ModelNotFound           404 model_not_found
    ├── Overloaded              429 rate_limit_exceeded (gateway's own cap)
    ├── LoopLimit               422 max_rounds_exceeded (on_max_rounds = "error")
    ├── ShuttingDown            503 (the grace period after SIGTERM is over)
    ├── StoreUnavailable        503 (the response store did not answer, or failed)
    ├── McpServerFailed         424 external_connector_error (a request's remote MCP server)
    └── UpstreamError           502 upstream_error
        ├── UpstreamTimeout     504
        ├── UpstreamBusy        503 (its connection slots stayed taken; carries Retry-After)
        ├── UpstreamRateLimited 429 (carries Retry-After)
        ├── ReplyTooLarge       502 (a reply past upstreams.NAME.max_reply_bytes)
        └── UpstreamStatus      the upstream's status, mapped (401/403 -> 502)

    ConfigError(problems)       not an HTTP error: the CLI prints it and exits 2

Foreign exceptions (httpx, aiohttp, MCP) are translated at one boundary each;
everything else that escapes is a 500 whose message names no internals.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.redact import SECRETS


class GatewayError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = None
    # The host's own status, when this error maps one it answered (see upstream._STATUS_MAP:
    # a 400 from the host becomes InvalidRequest, and still carries it).
    upstream_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class Unprocessable(InvalidRequest):
    status = 422


class NotFound(InvalidRequest):
    """A stored response (or item) that does not exist, or is another key's."""

    status = 404
    code = "not_found"


class BodyTimeout(InvalidRequest):
    status = 408
    code = "body_timeout"


class ClientGone(InvalidRequest):
    """The client left before its request was read: nobody to answer."""

    status = 499
    code = "client_disconnected"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class Overloaded(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class LoopLimit(GatewayError):
    # 422, not 5xx: SDKs retry 5xx, and a retry would replay the whole loop.
    status = 422
    type = "tool_loop_error"
    code = "max_rounds_exceeded"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"
    retryable = False  # the request provably never reached the host


class UpstreamBusy(UpstreamError):
    """Every connection slot to the upstream stayed taken past the pool timeout."""

    status = 503
    type = "server_error"
    code = "upstream_busy"


class ReplyTooLarge(UpstreamError):
    code = "upstream_reply_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The upstream's reply is larger than {limit} bytes (upstreams.NAME.max_reply_bytes); it was not read further.")


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamStatus(UpstreamError):
    """A non-2xx answer from the upstream, with its status mapped for the client."""


class ShuttingDown(GatewayError):
    """The grace period after SIGTERM is over and the request was still running."""

    status = 503
    type = "server_error"
    code = "shutting_down"


class StoreUnavailable(GatewayError):
    """The store did not answer in time, or failed: the database is locked, slow,
    unreachable or unreadable."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class McpServerFailed(GatewayError):
    """A remote MCP server a request named (`server_url`) could not be reached or refused us."""

    status = 424
    type = "external_connector_error"
    code = "http_error"


class TooLargeToStore(InvalidRequest):
    """One response alone is larger than the store's whole size cap."""

    status = 413
    code = "too_large_to_store"


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Problems:
    """Collects every config problem, so all are reported at once."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.lines: list[str] = []

    def add(self, key: str, what: str) -> None:
        self.lines.append(f"{self.where}: {key}: {what}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_json(exc: BaseException, *secrets: str) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers for any exception; internals and secrets (every known
    one, and `secrets` of this request) never leak."""
    if isinstance(exc, GatewayError):
        body = exc.body()
        body["error"]["message"] = SECRETS.scrub(exc.message, *secrets)
        return exc.status, orjson.dumps(body), exc.headers
    body = error_body("The gateway failed to handle this request.", "internal_error", None, "internal_error")
    return 500, orjson.dumps(body), {}
