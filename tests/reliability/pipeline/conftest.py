"""One pipeline for the package: the private Redis, vLLM's CPU engine on the tiny model, the
verifier and the generator API as processes (auth on everywhere), the trainer started by the
tests that need it. Its modules run in order: faults, then bad input, then swaps (whose last
test kills the engine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.pipeline.helpers import ENV
from tests.utils.pipeline import LocalStack, local_stack


@pytest.fixture(scope="package")
def pipeline(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    data_dir = tmp_path_factory.mktemp("pipeline")
    with local_stack(tiny_model_dir, data_dir, ENV, ("engine", "verifier", "generator")) as stack:
        yield stack
