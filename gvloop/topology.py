"""One map of the stack: where each component listens, where a client on this machine reaches
it, and the bearer token each API wants, read from the same GVLOOP_* settings the components
read. `gvloop up` (gvloop/stack.py), `gvloop status` and the preflight checks take it from here;
nothing else works out a component's URL."""

from __future__ import annotations

from pydantic import BaseModel

from agent_a.settings import EngineSettings, GeneratorSettings
from agent_b.settings import VerifierSettings
from gvloop.launcher import free_ports
from trainer.settings import TrainerSettings


def local_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


class StackPorts(BaseModel):
    engine: int = 8000
    generator: int = 8001
    verifier: int = 8002
    trainer_metrics: int = 8003
    """0: the trainer serves no metrics."""

    @classmethod
    def free(cls) -> StackPorts:
        """Ports free right now, for a stack beside others (tests, benchmarks)."""
        return cls(**dict(zip(cls.model_fields, free_ports(len(cls.model_fields)), strict=True)))


class Endpoint(BaseModel):
    host: str
    """The address the component listens on."""
    port: int
    port_setting: str
    """The environment variable that moves it."""

    @property
    def url(self) -> str:
        """Where a client on this machine reaches it."""
        return f"http://{local_host(self.host)}:{self.port}"


class StackTopology(BaseModel):
    engine: Endpoint
    generator: Endpoint
    verifier: Endpoint
    trainer_metrics: Endpoint
    generator_token: str | None = None
    """The generator API's (clients: POST /problems, /v1, GET /weights)."""
    operator_token: str | None = None
    """The hot swap's (the trainer's, POST /weights); unset: the generator's API token."""
    verifier_token: str | None = None

    @classmethod
    def from_settings(cls, ports: StackPorts | None = None) -> StackTopology:
        """From the GVLOOP_* settings, as each component started alone would read them; `ports`
        (say, free ones) instead of the ports they set."""
        engine, generator = EngineSettings(), GeneratorSettings()
        verifier, trainer = VerifierSettings(), TrainerSettings()
        ports = ports or StackPorts(
            engine=engine.port,
            generator=generator.port,
            verifier=verifier.port,
            trainer_metrics=trainer.metrics_port,
        )
        return cls(
            engine=Endpoint(host=engine.host, port=ports.engine, port_setting="GVLOOP_ENGINE_PORT"),
            generator=Endpoint(
                host=generator.host, port=ports.generator, port_setting="GVLOOP_GENERATOR_PORT"
            ),
            verifier=Endpoint(
                host=verifier.host, port=ports.verifier, port_setting="GVLOOP_VERIFIER_PORT"
            ),
            trainer_metrics=Endpoint(
                host=trainer.metrics_host,
                port=ports.trainer_metrics,
                port_setting="GVLOOP_TRAINER_METRICS_PORT",
            ),
            generator_token=generator.api_token,
            operator_token=generator.operator_token,
            verifier_token=verifier.api_token,
        )

    @classmethod
    def free(cls) -> StackTopology:
        """On ports free right now, for a stack beside others (tests, benchmarks)."""
        return cls.from_settings(StackPorts.free())

    @property
    def listeners(self) -> list[Endpoint]:
        """Every endpoint a component listens on (the trainer's metrics only when it serves
        them)."""
        endpoints = [self.engine, self.verifier, self.generator, self.trainer_metrics]
        return [e for e in endpoints if e.port]

    def client_env(self) -> dict[str, str]:
        """The tokens each component needs to call the others, as docker-compose.yml hands
        them: the trainer's for the hot swap, the generator's for the verifier."""
        env = {}
        if self.operator_token or self.generator_token:
            env["GVLOOP_TRAINER_GENERATOR_TOKEN"] = self.operator_token or self.generator_token
        if self.verifier_token:
            env["GVLOOP_GENERATOR_VERIFIER_TOKEN"] = self.verifier_token
        return env
