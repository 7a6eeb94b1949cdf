"""The Responses API's handlers: `POST /v1/responses` on the one loop and pump, and the store's
`GET`/`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`.

    slot = StoreSlot(lambda: open_store(url, ttl_s=..., max_bytes=...))   # opened on first use
    create = CreateResponse(runtime, slot)                                # a raw ASGI app

A response is stored after its last byte went out (`store: true`, the default),
bounded by WRITE_S; a failed write is logged, never a late error. Reads of an id
whose write is still running wait for it, so `create` then `retrieve` holds.
Only the owner (the gateway key's tag in `scope["owner"]`) reads or deletes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, InvalidRequest, NotFound, error_json
from gateway.loop import LoopJob
from gateway.redact import SECRETS
from gateway.responses.render import ResponsesJSON, ResponsesSSE, ResponseView
from gateway.responses.wire import McpTool, ResponsesRequest, new_id, parse_request, to_messages
from gateway.routes import Runtime, _read_body, reject
from gateway.store import ResponseStore, Stored, StoreUnavailable
from gateway.tools.toolbox import Offer

log = logging.getLogger("toolgate")

WRITE_S = 10.0  # one store write after the response, at most
OPEN_S = 10.0  # opening the store, at most
RETRY_OPEN_S = 5.0  # after a failed open, the next request tries again no sooner
WAIT_WRITE_S = 5.0  # a read waits this long for the same id's write


_ID_PREFIX = {
    "message": "msg", "function_call": "fc", "function_call_output": "fco", "mcp_call": "mcp",
    "mcp_list_tools": "mcpl", "mcp_approval_request": "mcpr", "mcp_approval_response": "mcpa", "reasoning": "rs",
}  # fmt: skip


class StoreSlot:
    """The response store, opened on first use (a gateway that never stores creates no file),
    and the writes still running, by response id."""

    def __init__(self, opener: Callable[[], Awaitable[ResponseStore]] | None) -> None:
        self.opener = opener
        self.store: ResponseStore | None = None
        self.failed_at = 0.0
        self.problem = ""
        self.writes: dict[str, asyncio.Task] = {}
        self._lock = asyncio.Lock()

    async def get(self) -> ResponseStore:
        if self.store is not None:
            return self.store
        if self.opener is None:
            raise StoreUnavailable("This gateway has no response store; send store: false.")
        async with self._lock:
            if self.store is None:
                if self.failed_at and time.monotonic() - self.failed_at < RETRY_OPEN_S:
                    raise StoreUnavailable(f"The response store is unavailable ({self.problem}); send store: false or retry shortly.", headers={"retry-after": "5"})
                try:
                    async with asyncio.timeout(OPEN_S):
                        self.store = await self.opener()
                except Exception as exc:
                    self.failed_at = time.monotonic()
                    self.problem = SECRETS(str(exc))[:200] or type(exc).__name__
                    log.error("the response store cannot be opened: %s", self.problem)
                    raise StoreUnavailable(f"The response store is unavailable ({self.problem}); send store: false or retry shortly.", headers={"retry-after": "5"}) from None
        return self.store

    async def settled(self, response_id: str) -> None:
        """Wait (bounded) for a write of `response_id` that is still running."""
        task = self.writes.get(response_id)
        if task is not None:
            try:
                async with asyncio.timeout(WAIT_WRITE_S):
                    await asyncio.shield(task)
            except (TimeoutError, Exception):
                pass

    def write(self, stored: Stored) -> None:
        task = asyncio.ensure_future(self._write(stored))
        self.writes[stored.id] = task
        task.add_done_callback(lambda _: self.writes.pop(stored.id, None))

    async def _write(self, stored: Stored) -> None:
        try:
            store = await self.get()
            async with asyncio.timeout(WRITE_S):
                await store.put(stored)
        except Exception as exc:
            log.error("response %s was not stored: %s", stored.id, SECRETS(str(exc))[:300] or type(exc).__name__)

    async def close(self) -> None:
        if self.writes:
            await asyncio.gather(*self.writes.values(), return_exceptions=True)
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()


def _with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        if not isinstance(item.get("id"), str) or not item["id"]:
            item = {**item, "id": new_id(_ID_PREFIX.get(item["type"], "item"))}
        out.append(item)
    return out


class CreateResponse:
    """`POST /v1/responses` as a raw ASGI app, as the chat route."""

    def __init__(self, runtime: Runtime, slot: StoreSlot) -> None:
        self.rt = runtime
        self.slot = slot

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        rt = self.rt
        server = rt.settings.server
        request_id = scope.get("request_id", "")
        owner = scope.get("owner", "")
        model = ""
        try:
            body = await _read_body(scope, receive, server.max_body_bytes, server.body_timeout_s)
            request = parse_request(body, max_items=server.max_messages)
            model = request.model
            alias = rt.alias(request.model)
            history = await self._history(request, owner)
            job, view, conversation_items = self._job(request, history, scope, request_id)
        except Exception as exc:
            await reject(send, exc, scope, started, model=model, api="responses")
            return
        job.trace = server.trace or server.log_requests
        renderer = ResponsesSSE(view) if request.stream else ResponsesJSON(view)
        outcome = await rt.serve(send, receive, scope, started, job, renderer, model=model, api="responses")
        if outcome is None:
            return
        stored = request.store and renderer.response is not None and outcome.ended in ("complete", "error")
        if stored:
            # After the last byte: the client never waits on the store.
            self.slot.write(Stored(view.id, owner, renderer.response, conversation_items, view.created_at))
        known = alias.name if alias.name in rt.settings.models else "(passthrough)"
        rt.record(started, job, outcome, known, model=request.model, stream=request.stream, request_id=request_id, scope=scope, api="responses", response_id=view.id, stored=bool(stored))

    async def _history(self, request: ResponsesRequest, owner: str) -> list[dict[str, Any]]:
        """The conversation before this request: the previous response's input and output items."""
        store = await self.slot.get() if request.store or request.previous_response_id else None
        history: list[dict[str, Any]] = []
        if request.previous_response_id:
            assert store is not None
            await self.slot.settled(request.previous_response_id)
            record = await store.get(request.previous_response_id, owner)
            if record is None:
                raise NotFound(f"No response with id {request.previous_response_id!r} found.", param="previous_response_id")
            history = [*record.input_items, *record.response.get("output", [])]
        if any(item["type"] == "item_reference" for item in request.input):
            # References resolve within the conversation `previous_response_id` names.
            by_id = {item.get("id"): item for item in history}
            resolved = []
            for i, item in enumerate(request.input):
                if item["type"] == "item_reference":
                    found = by_id.get(item["id"])
                    if found is None:
                        raise NotFound(f"No item with id {item['id']!r} in the previous response's conversation.", param=f"input[{i}].id")
                    item = found
                resolved.append(item)
            request.input = resolved
        return history

    def _job(self, request: ResponsesRequest, history: list[dict[str, Any]], scope: dict, request_id: str) -> tuple[LoopJob, ResponseView, list[dict[str, Any]]]:
        rt = self.rt
        alias = rt.alias(request.model)
        items = _with_ids([*history, *request.input])
        conversation = to_messages(items)
        if not conversation.messages:
            raise InvalidRequest("input is empty: send a message.", param="input")
        offer, asks = self._offer(request, alias.tools)
        if request.client_tools:
            clash = {t["function"]["name"] for t in request.client_tools} & offer.tools.keys()
            if clash:
                raise InvalidRequest(f"Function tool names clash with server tools: {', '.join(sorted(clash))}.", param="tools")
        messages = conversation.messages
        if request.instructions:
            # For this request only: not an input item, so a later previous_response_id does not carry it.
            messages = [{"role": "system", "content": request.instructions}, *messages]
        params = {**alias.defaults, **request.params, **alias.overrides}
        first_tool_choice = params.pop("tool_choice", None)
        owners = rt.toolbox.owners()
        labels = {name: owners.get(name, "toolgate") for name in offer.tools}
        used = dict.fromkeys([*(m.label for m in request.mcp), *labels.values()])
        list_tools = [self._listing(label, offer, labels) for label in used if label not in conversation.listed]
        job = rt.loop_job(
            alias,
            messages,
            params,
            offer,
            scope=scope,
            request_id=request_id,
            stream=request.stream,
            client_tools=None if request.no_tools else request.client_tools,
            ask_first=asks,
            resume=conversation.resume or None,
            first_tool_choice=first_tool_choice,
        )
        asked = request.echo.get("max_tool_calls")
        if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 0:
            job.max_tool_calls = min(job.max_tool_calls, asked)  # the client may ask for fewer, never more
        echo = {**request.echo, "tool_choice": request.tool_choice}
        view = ResponseView(
            id=new_id("resp"),
            alias=request.model,
            echo=echo,
            labels=labels,
            list_tools=list_tools,
            approvals={call["id"] for call, yes in conversation.resume if yes},
            max_rounds=job.max_rounds,
            logprobs=request.logprobs,
        )
        return job, view, items

    def _offer(self, request: ResponsesRequest, patterns: tuple[str, ...]) -> tuple[Offer, Callable[[str], bool] | None]:
        """The alias's tools plus those of every source an mcp tool names, filtered by allowed_tools."""
        toolbox = self.rt.toolbox
        if request.no_tools:
            return Offer(), None
        base = toolbox.select(patterns)
        if not request.mcp:
            return base, None
        sources = {source.name for source in toolbox.sources}
        owners = toolbox.owners()
        every = toolbox.select(("*",))
        by_label: dict[str, McpTool] = {}
        for i, mcp in enumerate(request.mcp):
            if mcp.label not in sources:
                raise InvalidRequest(f"No tool source named {mcp.label!r} on this gateway (server_label names one of its configured sources).", param=f"tools[{i}].server_label")
            by_label[mcp.label] = mcp
        chosen = dict(base.tools)
        for name, tool in every.tools.items():
            mcp = by_label.get(owners.get(name, ""))
            if mcp is not None and mcp.admits(name):
                chosen[name] = tool
        # A new Offer per request: a client-chosen filter must not grow the toolbox's cache.
        schemas = [s for s in every.schemas if s["function"]["name"] in chosen]
        offer = Offer(chosen, schemas, {n: every.checks[n] for n in chosen if n in every.checks})

        def asks(name: str) -> bool:
            mcp = by_label.get(owners.get(name, ""))
            return mcp is not None and mcp.asks(name)

        return offer, asks

    def _listing(self, label: str, offer: Offer, labels: dict[str, str]) -> dict[str, Any]:
        tools = []
        for schema in offer.schemas:
            function = schema["function"]
            if labels.get(function["name"]) == label:
                tools.append({"name": function["name"], "description": function.get("description") or None, "input_schema": function["parameters"], "annotations": None})
        return {"id": new_id("mcpl"), "type": "mcp_list_tools", "server_label": label, "tools": tools, "error": None}


# -- the store's routes --------------------------------------------------------------------------


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(exc: GatewayError) -> Response:
    status, body, headers = error_json(exc)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def store_routes(slot: StoreSlot) -> dict[str, Callable[[Request], Awaitable[Response]]]:
    """The endpoints for `GET /v1/responses/{response_id}`, its input_items, and `DELETE`."""

    async def found(request: Request) -> tuple[ResponseStore, str, str]:
        response_id = request.path_params["response_id"]
        store = await slot.get()
        await slot.settled(response_id)
        return store, response_id, request.scope.get("owner", "")

    def missing(response_id: str) -> Response:
        return _error(NotFound(f"No response with id {response_id!r} found.", param="response_id"))

    async def retrieve(request: Request) -> Response:
        try:
            store, response_id, owner = await found(request)
            record = await store.get(response_id, owner)
        except GatewayError as exc:
            return _error(exc)
        return missing(response_id) if record is None else _json(record.response)

    async def delete(request: Request) -> Response:
        try:
            store, response_id, owner = await found(request)
            deleted = await store.delete(response_id, owner)
        except GatewayError as exc:
            return _error(exc)
        return _json({"id": response_id, "object": "response", "deleted": True}) if deleted else missing(response_id)

    async def input_items(request: Request) -> Response:
        query = request.query_params
        try:
            limit = _limit(query.get("limit"))
            order = query.get("order") or "desc"
            if order not in ("asc", "desc"):
                raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
            store, response_id, owner = await found(request)
            page = await store.input_items(response_id, owner, after=query.get("after") or None, limit=limit, order=order)
        except GatewayError as exc:
            return _error(exc)
        if page is None:
            return missing(response_id)
        items, more = page
        body = {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": more,
        }
        return _json(body)

    return {"retrieve": retrieve, "delete": delete, "input_items": input_items}


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return 20
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise InvalidRequest("limit must be an integer from 1 to 100.", param="limit")
    return int(value)
