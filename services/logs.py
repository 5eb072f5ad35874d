"""Logging for people: one readable line per event, to stdout, the same format in every service."""

import logging
import sys
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)-5s %(name)s | %(message)s"


def setup_logging(level: str | None = None, stream: TextIO = sys.stdout) -> None:
    """`level` unset: GVLOOP_LOG_LEVEL. A command whose stdout is its result logs to stderr."""
    if level is None:
        from services.settings import CommonSettings

        level = CommonSettings().log_level
    logging.basicConfig(
        level=level.upper(), format=FORMAT, datefmt="%H:%M:%S", stream=stream, force=True
    )
    # Per-request access lines and HTTP client chatter drown the events that matter.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
