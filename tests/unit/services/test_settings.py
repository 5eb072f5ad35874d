"""Settings come from GVLOOP_* environment variables, with documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.settings import CommonSettings


def test_defaults_run_on_a_laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GVLOOP_REDIS_URL", raising=False)
    settings = CommonSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.model == "default"
    assert settings.redis_url is None  # the embedded Redis
    assert settings.checkpoint_root == settings.data_dir / "checkpoints"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GVLOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GVLOOP_MAX_BACKLOG", "7")
    monkeypatch.setenv("GVLOOP_REDIS_URL", "redis://example:6379/0")
    settings = CommonSettings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.data_dir, settings.max_backlog) == (tmp_path, 7)
    assert settings.redis_url == "redis://example:6379/0"


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVLOOP_MAX_BACKLOG", "0")
    with pytest.raises(ValidationError, match="max_backlog"):
        CommonSettings(_env_file=None)  # type: ignore[call-arg]


def test_fields_are_documented() -> None:
    assert [n for n, f in CommonSettings.model_fields.items() if not f.description] == []
