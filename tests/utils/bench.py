"""The benchmark scripts as modules, for the tests that hold them to the pipeline's parts
(`bench/` is scripts beside each other, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).parents[2] / "bench"


def naive_loop() -> ModuleType:
    """bench/naive_loop.py, the learning benchmark's baseline."""
    spec = importlib.util.spec_from_file_location("naive_loop", BENCH / "naive_loop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["naive_loop"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module
