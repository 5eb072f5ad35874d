"""What the trainer's in-process tests share: the settings of a worker on the tiny model,
writing under the test's directory and reading the session's Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.redis_server import EmbeddedRedis
from services.settings import CommonSettings


@pytest.fixture
def common(
    redis_server: EmbeddedRedis, stream_name: str, tiny_model_dir: Path, tmp_path: Path
) -> CommonSettings:
    return CommonSettings(
        _env_file=None,  # type: ignore[call-arg]
        model=str(tiny_model_dir),
        data_dir=tmp_path,
        redis_url=redis_server.url,
        stream=stream_name,
    )
