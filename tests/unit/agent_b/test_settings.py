"""The verifier's settings: GVLOOP_VERIFIER_* variables, documented fields, checked values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent_b.settings import VerifierSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GVLOOP_VERIFIER_API_TOKEN", raising=False)
    settings = VerifierSettings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.host, settings.port) == ("127.0.0.1", 8002)
    assert settings.api_token is None
    assert settings.judge_backend == "local"
    assert settings.judge_model is None  # the model agent A serves
    assert settings.judge_reasoning is False  # reference answers need no judge


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVLOOP_VERIFIER_PORT", "9100")
    monkeypatch.setenv("GVLOOP_VERIFIER_API_TOKEN", "secret")
    monkeypatch.setenv("GVLOOP_VERIFIER_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("GVLOOP_VERIFIER_JUDGE_MODEL", "")  # empty means unset (compose)
    settings = VerifierSettings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.port, settings.api_token, settings.max_batch_size) == (9100, "secret", 4)
    assert settings.judge_model is None


def test_judge_model_falls_back_to_the_common_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVLOOP_MODEL", "/models/served")
    assert VerifierSettings(_env_file=None).resolved_judge_model() == "/models/served"  # type: ignore[call-arg]
    assert VerifierSettings(judge_model="/models/judge").resolved_judge_model() == "/models/judge"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("threshold", 1.5, "threshold"),
        ("max_batch_size", 0, "max_batch_size"),
        ("device", "tpu", "device"),
        ("judge_backend", "openai", "judge_url"),  # a remote judge needs its address
    ],
)
def test_invalid_values_name_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        VerifierSettings(**{field: value})


def test_fields_are_documented() -> None:
    assert [n for n, f in VerifierSettings.model_fields.items() if not f.description] == []
