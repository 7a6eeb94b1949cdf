"""The Responses API's handlers: `POST /v1/responses` on the one loop and pump, and the store's
`GET`/`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`.

    slot = StoreSlot(lambda: open_store(url, ttl_s=..., max_bytes=...))   # opened on first use
    create = CreateResponse(runtime, slot)                                # a raw ASGI app

A response (`store: true`, the default) is stored before the bytes that end it go
out (`slot.StoreBeforeTheEnd`). Only the owner (the gateway key's tag in `scope["owner"]`) reads or deletes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.config import ModelAlias
from gateway.errors import GatewayError, InvalidRequest, NotFound, error_json
from gateway.loop import LoopJob
from gateway.redact import SECRETS
from gateway.responses.conversation import to_messages
from gateway.responses.ids import Mint, with_ids
from gateway.responses.remote import RemoteServers
from gateway.responses.render import ResponsesJSON, ResponsesSSE, ResponseView
from gateway.responses.slot import StoreBeforeTheEnd, StoreSlot
from gateway.responses.tools import McpTool
from gateway.responses.wire import ResponsesRequest, parse_request
from gateway.routes import Runtime, _read_body, reject
from gateway.store import ResponseStore, Stored
from gateway.tools.base import Tool
from gateway.tools.toolbox import Offer


_CALLS_BY_ID = frozenset({"mcp_call", "mcp_approval_request"})  # see conversation.to_messages
_LISTINGS = 64  # listings kept (one per offer); a rebuilt toolbox's offers replace the old ones


class CreateResponse:
    """`POST /v1/responses` as a raw ASGI app, as the chat route."""

    def __init__(self, runtime: Runtime, slot: StoreSlot, remote: RemoteServers | None = None) -> None:
        self.rt = runtime
        self.slot = slot
        self.remote = remote or RemoteServers(runtime.settings.responses, tool_timeout_s=runtime.settings.loop.tool_timeout_s)
        self._listings: dict[int, _Listing] = {}  # by id(offer), see _listing

    async def _remote_tools(self, request: ResponsesRequest, held: list[AsyncExitStack]) -> dict[str, list[Tool]]:
        """The tools of each remote server the request names by server_url, by its label;
        every check first, so a bad tool is a 400 before anything connects. Their sessions
        stay open, in a stack put in `held`, until the request ends."""
        remote = [mcp for mcp in request.mcp if mcp.url is not None]
        if not remote or request.no_tools:
            return {}
        configured = {source.name for source in self.rt.toolbox.sources}
        for mcp in remote:
            self.remote.check(mcp, f"tools[{mcp.index}]")
            if mcp.label in configured:
                raise InvalidRequest(f"The server_label {mcp.label!r} names a configured tool source; give the server_url another label.", param=f"tools[{mcp.index}].server_label")
        sessions = AsyncExitStack()
        held.append(sessions)
        found = await asyncio.gather(*(sessions.enter_async_context(self.remote.session(mcp, param=f"tools[{mcp.index}]")) for mcp in remote), return_exceptions=True)
        listed: dict[str, list[Tool]] = {}
        for mcp, result in zip(remote, found):
            if isinstance(result, BaseException):
                raise result
            listed[mcp.label] = result
        return listed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # The remote MCP sessions this request opened. Most open none: a stack is made only
        # for those that do.
        held: list[AsyncExitStack] = []
        try:
            await self._serve(scope, receive, send, held)
        finally:
            for sessions in held:
                await sessions.aclose()

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any, held: list[AsyncExitStack]) -> None:
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
            # Most requests name no remote server and continue no stored conversation: they
            # skip those awaits. One to be stored finds the store open (or fails, 503) before
            # the model is asked, not after.
            remote = await self._remote_tools(request, held) if request.mcp else {}
            history = await self._history(request, owner) if request.previous_response_id or request.references else []
            if request.store and self.slot.store is None:
                await self.slot.get()
            job, view, conversation_items = self._job(request, alias, history, scope, request_id, remote)
        except Exception as exc:
            await reject(send, exc, scope, started, model=model, api="responses")
            return
        job.trace = server.trace or server.log_requests
        renderer = ResponsesSSE(view) if request.stream else ResponsesJSON(view)
        if request.store:
            slot = self.slot

            def record() -> Awaitable[bool]:
                assert renderer.response is not None
                return slot.put(Stored(view.id, owner, renderer.response, conversation_items, view.created_at, renderer.encoded))

            send = StoreBeforeTheEnd(send, renderer, record)
        outcome = await rt.serve(send, receive, scope, started, job, renderer, model=model, api="responses")
        if outcome is None:
            return
        stored = isinstance(send, StoreBeforeTheEnd) and bool(send.stored)
        known = alias.name if alias.name in rt.settings.models else "(passthrough)"
        rt.record(started, job, outcome, known, model=request.model, stream=request.stream, request_id=request_id, scope=scope, api="responses", response_id=view.id, stored=stored)

    async def _history(self, request: ResponsesRequest, owner: str) -> list[dict[str, Any]]:
        """The conversation before this request: the previous response's input and output items."""
        history: list[dict[str, Any]] = []
        if request.previous_response_id:
            store = await self.slot.get()
            await self.slot.settled(request.previous_response_id)
            record = await store.get(request.previous_response_id, owner)
            if record is None:
                raise NotFound(f"No response with id {request.previous_response_id!r} found.", param="previous_response_id")
            history = [*record.input_items, *record.response.get("output", [])]
        if request.references:
            request.input = await self._resolve(request.input, history, owner)
        return history

    async def _resolve(self, items: list[dict[str, Any]], history: list[dict[str, Any]], owner: str) -> list[dict[str, Any]]:
        """Each item_reference as the item it names: from the previous conversation, or from
        any stored response of the same key (404 naming the id, as the hosted API, otherwise)."""
        by_id = {item.get("id"): item for item in history}
        store: ResponseStore | None = None
        resolved = []
        for i, item in enumerate(items):
            if item["type"] == "item_reference":
                found = by_id.get(item["id"])
                if found is None:
                    store = store or await self.slot.get()
                    found = await store.find_item(item["id"], owner)
                if found is None or found.get("type") == "item_reference":
                    raise NotFound(
                        f"Item with id {item['id']!r} not found. Items are not persisted when `store` is set to false.",
                        param=f"input[{i}].id",
                    )
                item = found
            resolved.append(item)
        return resolved

    def _job(
        self, request: ResponsesRequest, alias: ModelAlias, history: list[dict[str, Any]], scope: dict[str, Any], request_id: str, remote: dict[str, list[Tool]]
    ) -> tuple[LoopJob, ResponseView, list[dict[str, Any]]]:
        rt = self.rt
        # Ids are the store's, and the chat call ids of the calls that name theirs by `id`:
        # a response not stored gives one to those alone.
        mint = Mint()
        items = with_ids([*history, *request.input], mint, None if request.store else _CALLS_BY_ID)
        conversation = to_messages(items)
        if not conversation.messages:
            raise InvalidRequest("input is empty: send a message.", param="input")
        offer, asks, remote_names = self._offer(request, alias.tools, remote)
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
        if not offer.tools and (request.no_tools or not request.client_tools):
            # No tools go upstream: hosts refuse the tool parameters without them (the Responses
            # API takes them, and the Response object still repeats what was sent).
            params.pop("parallel_tool_calls", None)
            if request.params.get("tool_choice") == "required":
                raise InvalidRequest("tool_choice 'required' needs a tool, and this request offers none.", param="tool_choice")
            first_tool_choice = None
        labels: dict[str, str] = {}
        list_tools: list[dict[str, Any]] = []
        if offer.tools or request.mcp:
            listing = self._listing(request, offer, remote_names)
            labels = listing.labels
            list_tools = [
                {"id": mint("mcpl"), "type": "mcp_list_tools", "server_label": label, "tools": tools, "error": self._down(label)}
                for label, tools in listing.tools.items()
                if label not in conversation.listed
            ]
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
        view = ResponseView(
            alias=request.model,
            echo=request.echo,
            labels=labels,
            list_tools=list_tools,
            approvals={call["id"] for call, yes in conversation.resume if yes} if conversation.resume else set(),
            max_rounds=job.max_rounds,
            logprobs=request.logprobs,
            mint=mint,
        )
        return job, view, items

    def _down(self, label: str) -> str | None:
        """Why the configured source `label` lists no tools now (it is not ready), or None."""
        for source in self.rt.toolbox.sources:
            if source.name == label:
                status = source.status()
                return None if status.ready else SECRETS(f"The MCP server {label!r} is not available: {status.detail or 'not ready'}")[:500]
        return None

    def _offer(
        self, request: ResponsesRequest, patterns: tuple[str, ...], remote: dict[str, list[Tool]]
    ) -> tuple[Offer, Callable[[str], bool] | None, dict[str, str]]:
        """The alias's tools, those of every source an mcp tool names (filtered by allowed_tools),
        and the remote servers' (with the label each offered name belongs to)."""
        toolbox = self.rt.toolbox
        if request.no_tools:
            return Offer(), None, {}
        base = toolbox.select(patterns)
        if not request.mcp:
            return base, None, {}
        sources = {source.name for source in toolbox.sources}
        owners = toolbox.owners()
        every = toolbox.select(("*",))
        by_label: dict[str, McpTool] = {}
        defaults = self.rt.settings.responses.require_approval
        for mcp in request.mcp:
            if mcp.url is None and mcp.label not in sources:
                raise InvalidRequest(f"No tool source named {mcp.label!r} on this gateway (server_label names one of its configured sources).", param=f"tools[{mcp.index}].server_label")
            if not mcp.asked and mcp.url is None and defaults.get(mcp.label) == "never":
                mcp = dataclasses.replace(mcp, always=frozenset())  # the config's default for this source
            by_label[mcp.label] = mcp
        # The alias's own tools, but those of a source the request names: its allowed_tools narrow them too.
        chosen = {}
        for name, tool in base.tools.items():
            named = by_label.get(owners.get(name, ""))
            if named is None or named.url is not None or named.admits(name):
                chosen[name] = tool
        for name, tool in every.tools.items():
            named = by_label.get(owners.get(name, ""))
            if named is not None and named.url is None and named.admits(name):
                chosen[name] = tool
        # A new Offer per request: a client-chosen filter must not grow the toolbox's cache.
        schemas = [s for s in every.schemas if s["function"]["name"] in chosen]
        checks = {n: every.checks[n] for n in chosen if n in every.checks}
        client = {t["function"]["name"] for t in request.client_tools or ()}
        remote_names: dict[str, str] = {}
        for label, tools in remote.items():
            mcp = by_label[label]
            for tool in tools:
                if not mcp.admits(tool.name):
                    continue
                name = tool.name if tool.name not in chosen and tool.name not in client else f"{label}_{tool.name}"
                if name in chosen or name in client:
                    continue  # taken twice over: left out rather than shadow another tool
                chosen[name] = tool if name == tool.name else tool.renamed(name)
                remote_names[name] = label
                schemas.append({"type": "function", "function": {"name": name, "description": tool.description, "parameters": dict(tool.parameters)}})
        offer = Offer(chosen, schemas, checks)

        def asks(name: str) -> bool:
            mcp = by_label.get(remote_names.get(name) or owners.get(name, ""))
            return mcp is not None and mcp.asks(name)

        return offer, asks, remote_names

    def _listing(self, request: ResponsesRequest, offer: Offer, remote_names: dict[str, str]) -> _Listing:
        # The toolbox's offers are rebuilt (new objects) when its tools change: the listing of
        # one is kept with it, by identity. Per-request offers (an mcp tool's filter) are listed anew.
        shared = not request.mcp  # the toolbox's own offer, the same object request after request
        kept = self._listings.get(id(offer)) if shared else None
        if kept is not None and kept.offer is offer:
            return kept
        owners = self.rt.toolbox.owners()
        labels = {name: remote_names.get(name) or owners.get(name, "toolgate") for name in offer.tools}
        tools: dict[str, list[dict[str, Any]]] = {label: [] for label in [*(m.label for m in request.mcp), *labels.values()]}
        for schema in offer.schemas:
            function = schema["function"]
            label = labels.get(function["name"])
            if label is not None:
                tools[label].append({"name": function["name"], "description": function.get("description") or None, "input_schema": function["parameters"], "annotations": None})
        listing = _Listing(offer, labels, tools)
        if shared:
            if len(self._listings) >= _LISTINGS:
                self._listings.clear()
            self._listings[id(offer)] = listing
        return listing


@dataclasses.dataclass(frozen=True, slots=True)
class _Listing:
    """An offer's tools as a response shows them: each offered name's server label, and the
    tools each label lists (its `mcp_list_tools` item), labels in the order first named."""

    offer: Offer  # held, so that its id is not another's while kept
    labels: dict[str, str]
    tools: dict[str, list[dict[str, Any]]]


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
        if request.query_params.get("stream", "false").lower() not in ("false", "0", ""):
            return _error(InvalidRequest("Streaming a stored response again is not supported: retrieve it without stream.", param="stream"))
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
