"""OpenAI Chat Completions on the wire: the loop's vocabulary as it is, SSE when streamed.

    model = OpenAIChat(client, job)
    async for part in model.turn(messages, tools, params): ...   # Delta ..., then one Turn

Request building is here; folding the reply is `gateway/assemble.py`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.assemble import StreamAssembler, turn_from_completion
from gateway.model import ModelJob, Turn, TurnParts, once

if TYPE_CHECKING:
    from gateway.upstream import UpstreamClient


class OpenAIChat:
    __slots__ = ("client", "job", "keep_reasoning")

    def __init__(self, client: UpstreamClient, job: ModelJob) -> None:
        self.client = client
        self.job = job
        self.keep_reasoning = job.upstream.host.send_reasoning

    def payload(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        job = self.job
        body = {**params, "model": job.model}
        if tools:
            body["tools"] = tools
        if job.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body["messages"] = messages if self.keep_reasoning else _without_reasoning(messages)
        return body

    def turn(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], params: dict[str, Any]) -> TurnParts:
        job = self.job
        body = self.payload(messages, tools, params)
        if job.stream:
            # The client's own generator, not one wrapped around it: no hop per network read.
            fold = StreamAssembler(max_repeats=job.max_repeated_deltas)
            return self.client.stream(job.upstream, body, fold=fold, request_id=job.request_id, client_auth=job.client_auth, patience=job.patience)
        return once(self._complete(body))

    async def _complete(self, body: dict[str, Any]) -> Turn:
        job = self.job
        return turn_from_completion(await self.client.complete(job.upstream, body, request_id=job.request_id, client_auth=job.client_auth))


def _without_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The assistant's `reasoning_content` stays with the gateway: most hosts reject or ignore it."""
    for message in messages:
        if "reasoning_content" in message:
            return [{k: v for k, v in m.items() if k != "reasoning_content"} if "reasoning_content" in m else m for m in messages]
    return messages
