"""config/examples/litellm.yaml, run as written by a real LiteLLM proxy in front of toolgate.

LiteLLM is not a dependency: the test runs when a `litellm` command is found ($TOOLGATE_LITELLM,
else on PATH) and is skipped otherwise. The README's "Deploying" section says how to install one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from gateway.config import load_config
from tests.fakellm import Calls, FakeLLM, Reply
from tests.test_e2e import serve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "examples" / "litellm.yaml"
LITELLM = os.environ.get("TOOLGATE_LITELLM") or shutil.which("litellm")
CLIENT_KEY = "tg-client-key-0123456789"
MASTER_KEY = "sk-litellm-master-0123456789"
START_S = 120.0  # LiteLLM's proxy takes ~20 s to import on a small machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(LITELLM is None, reason="no litellm command (see README: Deploying)")
async def test_litellm_example_runs_as_written_in_front_of_toolgate(tmp_path):
    text = EXAMPLE.read_text()
    # As written, but "toolgate" resolves in a compose network only: loopback here.
    assert text.count("http://toolgate:8080/v1") == 2
    async with FakeLLM(models=("gpt-4o-mini",)) as fake:
        fake.push(Calls([("calculate", {"expression": "6*7"})]), Reply("It is 42."))
        environ = {"TOOLGATE_UPSTREAM_URL": fake.url, "TOOLGATE_API_KEYS": CLIENT_KEY}
        config = load_config(ROOT / "config" / "toolgate.toml", environ)
        async with serve(config) as (base, _):
            written = tmp_path / "litellm.yaml"
            written.write_text(text.replace("http://toolgate:8080/v1", base))
            port = _free_port()
            env = {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(tmp_path),
                "LITELLM_MASTER_KEY": MASTER_KEY,
                "TOOLGATE_CLIENT_KEY": CLIENT_KEY,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list from the network
            }
            log = (tmp_path / "litellm.log").open("wb")
            proc = subprocess.Popen(
                [LITELLM, "--config", str(written), "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip
            try:
                litellm_base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(timeout=5) as http:
                    async with asyncio.timeout(START_S):
                        while True:
                            assert proc.poll() is None, (tmp_path / "litellm.log").read_text()[-3000:]
                            try:
                                if (await http.get(f"{litellm_base}/health/liveliness")).status_code == 200:
                                    break
                            except httpx.TransportError:
                                pass
                            await asyncio.sleep(0.5)
                    refused = await http.post(f"{litellm_base}/v1/chat/completions", json={"model": "gpt-4o-mini-with-tools", "messages": []})
                async with openai.AsyncOpenAI(base_url=f"{litellm_base}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60) as client:
                    reply = await client.chat.completions.create(
                        model="gpt-4o-mini-with-tools", messages=[{"role": "user", "content": "What is 6*7?"}]
                    )
                    vectors = await client.embeddings.create(model="toolgate-embeddings", input="hello", encoding_format="float")
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
                log.close()
    assert refused.status_code in (400, 401)  # the master key is enforced
    assert reply.choices[0].message.content == "It is 42."
    chat = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert len(chat) == 2 and chat[1].body["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    assert len(vectors.data[0].embedding) == 8
    [embedded] = [r for r in fake.requests if r.path == "/v1/embeddings"]
    assert embedded.body["model"] == "gpt-4o-mini"  # toolgate-plain's upstream model
