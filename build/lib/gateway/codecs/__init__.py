"""Model codecs: one module per wire format, named by the host table's `codec` column.

    model = open_model(client, job)   # a gateway.model.Model for job.upstream's host type

A host with another wire format is one codec module, one row here, and one
row in `gateway/hosts.py` (`codec="..."`); the loop does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.codecs.ollama import OllamaChat
from gateway.codecs.openai_chat import OpenAIChat
from gateway.model import Model, ModelJob

if TYPE_CHECKING:
    from gateway.upstream import UpstreamClient

CODECS: dict[str, Callable[[Any, Any], Model]] = {
    "openai-chat": OpenAIChat,
    "ollama": OllamaChat,
}


def open_model(client: UpstreamClient, job: ModelJob) -> Model:
    """The job's model, spoken to in its host's wire format."""
    return CODECS[job.upstream.host.codec](client, job)
