"""Self-verification: agent B's judge on agent A's own vLLM engine (the openai backend at the
engine's URL, as `gvloop up --self-verify` sets it) answers from the served model and reports,
with each verdict, the weight version the engine serves; the rules report none."""

from __future__ import annotations

import httpx
import pytest

from agent_b.metrics import VerifierMetrics
from agent_b.scoring import setup_verifier
from agent_b.settings import VerifierSettings
from services.schemas import VerifyRequest
from tests.integration.agent_a.conftest import Backends

pytestmark = pytest.mark.slow


async def test_the_engine_as_the_judge_reports_its_weight_version(backends: Backends) -> None:
    settings = VerifierSettings(
        _env_file=None,  # type: ignore[call-arg]
        judge_backend="openai",
        judge_url=backends.engine_url,
        rule_workers=1,
    )
    verifier = setup_verifier(settings, VerifierMetrics())
    await verifier.load()
    try:
        assert verifier.load_error is None
        async with httpx.AsyncClient(base_url=backends.engine_url, timeout=30) as engine:
            served = (await engine.get("/v1/models")).json()["data"][0]["id"]
            raw = (await engine.get("/weight_info")).json()["weight_version"]
        version = 0 if raw == "default" else int(raw)
        judged = await verifier.verify(
            VerifyRequest(problem="What is 2 + 2?", solution="2 + 2 = 4. Answer: 4", method="model")
        )
        assert judged.decided_by == "model" and judged.model == served
        assert judged.judge_p_correct is not None and 0 <= judged.judge_p_correct <= 1
        assert judged.judge_version == version
        ruled = await verifier.verify(
            VerifyRequest(problem="What is 2 + 2?", solution="Answer: 4", reference_answer="4")
        )
        assert ruled.decided_by == "rule" and ruled.judge_version is None
    finally:
        await verifier.aclose()
