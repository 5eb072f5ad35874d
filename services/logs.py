"""Logging for people: one readable line per event, to stdout, the same format in every service."""

import logging
import sys
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)-5s %(name)s | %(message)s"


def setup_logging(level: str, stream: TextIO = sys.stdout, file: Path | None = None) -> None:
    """`level`: the command's `CommonSettings.log_level` (GVLOOP_LOG_LEVEL) as a rule. A command
    whose stdout is its result logs to stderr; one whose console shows a summary instead (`gvloop
    up`) logs to `file`."""
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(file) if file is not None else logging.StreamHandler(stream)
    logging.basicConfig(
        level=level.upper(), format=FORMAT, datefmt="%H:%M:%S", handlers=[handler], force=True
    )
    # Per-request access lines and HTTP client chatter drown the events that matter.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
