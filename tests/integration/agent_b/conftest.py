"""A real verifier for the package's tests: `gvloop agent-b serve` on the tiny model, behind a
bearer token, reached over real HTTP."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gvloop.launcher import Component, Launcher, free_ports

TOKEN = "test-token"


@dataclass(frozen=True)
class Server:
    url: str
    token: str


@pytest.fixture(scope="session")
def verifier_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    url = f"http://127.0.0.1:{(port := free_ports(1)[0])}"
    command = [sys.executable, "-m", "gvloop", "agent-b", "serve"]
    command += ["--model", str(tiny_model_dir), "--port", str(port)]
    env = {
        "GVLOOP_VERIFIER_API_TOKEN": TOKEN,
        "GVLOOP_VERIFIER_JUDGE_REASONING": "true",  # exercise the rule + judge path
        "GVLOOP_VERIFIER_MAX_WAIT_MS": "20",
        "GVLOOP_VERIFIER_RULE_WORKERS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    with Launcher(tmp_path_factory.mktemp("verifier"), echo=False) as launcher:
        launcher.start(Component("verifier", command, env, f"{url}/health", ready_timeout_s=300))
        launcher.wait_ready()
        yield Server(url, TOKEN)


@pytest.fixture
async def http(verifier_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """Raw HTTP to the verifier, with its token: for what the typed client cannot send."""
    headers = {"Authorization": f"Bearer {verifier_server.token}"}
    async with httpx.AsyncClient(base_url=verifier_server.url, headers=headers, timeout=60) as http:
        yield http
