"""Fixtures of the reliability suite: a figures reporter per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.utils.figures import Figures


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path: Path) -> Figures:
    return Figures(request.node.name, tmp_path)
