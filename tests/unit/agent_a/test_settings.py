"""Agent A's settings: GVLOOP_ENGINE_* and GVLOOP_GENERATOR_* variables, documented defaults,
errors that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from agent_a.settings import EngineSettings, GeneratorSettings


def load(cls: type[BaseSettings]) -> BaseSettings:
    return cls(_env_file=None)  # type: ignore[call-arg]


def test_defaults_stay_on_loopback() -> None:
    engine, generator = load(EngineSettings), load(GeneratorSettings)
    assert (engine.host, engine.port) == ("127.0.0.1", 8000)
    assert (generator.host, generator.port) == ("127.0.0.1", 8001)
    assert generator.engine_urls == ["http://127.0.0.1:8000"]
    assert generator.verifier_url == "http://127.0.0.1:8002"
    assert generator.api_token is None


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVLOOP_GENERATOR_ENGINE_URLS", '["http://a:8000", "http://b:8000"]')
    monkeypatch.setenv("GVLOOP_GENERATOR_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("GVLOOP_ENGINE_EXTRA_ARGS", '["--max-num-seqs", "8"]')
    monkeypatch.setenv("GVLOOP_ENGINE_GPU_MEMORY_UTILIZATION", "")  # compose leaves it empty
    generator = load(GeneratorSettings)
    assert generator.engine_urls == ["http://a:8000", "http://b:8000"]
    assert generator.retry.attempts == 2
    engine = load(EngineSettings)
    assert engine.extra_args == ["--max-num-seqs", "8"]
    assert engine.gpu_memory_utilization is None


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("GVLOOP_GENERATOR_ENGINE_URLS", '["engine:8000"]', "engine_urls"),  # no scheme
        ("GVLOOP_GENERATOR_ENGINE_URLS", "[]", "engine_urls"),
        ("GVLOOP_GENERATOR_VERIFIER_URL", "ftp://x", "verifier_url"),
        ("GVLOOP_GENERATOR_API_TOKEN", "changeme", "api_token"),  # a placeholder secret
        ("GVLOOP_GENERATOR_ENGINE_TIMEOUT_S", "0", "engine_timeout_s"),
    ],
)
def test_invalid_values_name_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=field):
        load(GeneratorSettings)


@pytest.mark.parametrize("cls", [EngineSettings, GeneratorSettings])
def test_fields_are_documented(cls: type[BaseSettings]) -> None:
    undocumented = [n for n, f in cls.model_fields.items() if not f.description]
    assert set(undocumented) <= {"port", "dtype"}
