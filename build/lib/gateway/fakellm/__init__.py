"""A scripted fake upstream LLM host that speaks the real wire formats, quirks included.

Used by the end-to-end tests (a real server on 127.0.0.1), by ``toolgate serve --demo`` and by
the benchmark (cheap enough never to be the bottleneck)::

    from gateway.fakellm import FakeLLM, Reply, Calls, Fail, Raw

    async with FakeLLM(host_type="openai", quirks=["whole_call"]) as fake:
        fake.push(
            Calls([("calculate", {"expression": "2+2"})]),   # round 1: the model calls a tool
            Reply("The answer is 4."),                       # round 2: it answers
        )
        ...  # point the gateway at fake.url, send it a request
        assert fake.requests[1].body["messages"][-1]["role"] == "tool"
        assert fake.pending == 0

Each chat request takes the next scripted turn (a callable turn gets the request body first);
with the script empty, a small demo brain answers: it calls ``calculate`` / ``current_time``
when they are offered and the user asks for arithmetic or the time, reads tool results back,
and otherwise acknowledges. Host types (``wire.HOST_TYPES``) decide the paths; quirks
(``wire.Quirks``, one documented flag each) bend the wire the way real hosts do.

``python -m gateway.fakellm --help`` runs one standalone.
"""

from .script import Calls, Fail, Raw, Reply, demo_turn
from .server import FakeLLM, Recorded
from .wire import HOST_TYPES, QUIRKS

__all__ = ["HOST_TYPES", "QUIRKS", "Calls", "Fail", "FakeLLM", "Raw", "Recorded", "Reply", "demo_turn"]
