"""Reads the deployment files the way Docker Compose does, without a Docker engine: the env file,
`${VAR}` interpolation, the compose specification's JSON schema (kept beside these tests), and
each service's role (which gvloop command it runs)."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
SETTINGS_MODULES = ("services.settings", "agent_a.settings", "agent_b.settings", "trainer.settings")

# Which gvloop command makes a service what it is, and the settings prefix it reads.
ROLES: dict[tuple[str, ...], str] = {
    ("model", "prepare"): "model",
    ("agent-a", "engine"): "engine",
    ("agent-a", "serve"): "generator",
    ("agent-b", "serve"): "verifier",
    ("trainer", "run"): "trainer",
}
ROLE_PREFIX = {
    "engine": "GVLOOP_ENGINE_",
    "generator": "GVLOOP_GENERATOR_",
    "verifier": "GVLOOP_VERIFIER_",
    "trainer": "GVLOOP_TRAINER_",
}
PROFILES = ("gpu", "cpu")
# .env.example leaves the API tokens empty on purpose (compose refuses to start without them):
# the tests supply these.
TEST_TOKENS = {
    "GVLOOP_GENERATOR_API_TOKEN": "test-token-a",
    "GVLOOP_GENERATOR_OPERATOR_TOKEN": "test-token-operator",
    "GVLOOP_VERIFIER_API_TOKEN": "test-token-b",
}

# $$ is a literal dollar; ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error},
# ${NAME?error}; $NAME.
_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


class InterpolationError(ValueError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped, values taken verbatim."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise ValueError(f"{path.name}:{number}: not KEY=VALUE: {line!r}")
        env[key] = value
    return env


def referenced_variables(text: str) -> set[str]:
    """Names of the variables a compose file interpolates."""
    return {m["name"] or m["bare"] for m in _VARIABLE.finditer(text) if m.group(0) != "$$"}


def fallbacks(text: str) -> dict[str, set[str]]:
    """Variable -> the defaults its `${NAME:-default}` forms give (empty included)."""
    found: dict[str, set[str]] = {}
    for m in _VARIABLE.finditer(text):
        if m["op"] == ":-":
            found.setdefault(m["name"], set()).add(m["arg"])
    return found


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Substitute variables in every string of a parsed compose file, as Compose does."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"] or match["bare"], match["op"], match["arg"]
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and missing:
            raise InterpolationError(f"{name}: {arg}")
        if op is not None and op.endswith("-") and missing:
            return arg
        return value or ""

    return _VARIABLE.sub(substitute, node)


def load_compose(env: dict[str, str] | None, text: str | None = None) -> dict[str, Any]:
    """docker-compose.yml parsed (anchors and merge keys resolved), interpolated unless `env`
    is None."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text() if text is None else text)
    return doc if env is None else interpolate(doc, env)


def compose_schema() -> dict[str, Any]:
    """The compose specification's JSON schema (draft-07), which Docker Compose v2 checks with."""
    return json.loads(COMPOSE_SCHEMA.read_text())


def system_docker_compose() -> str | None:
    """A working docker-compose command (Debian's), not one a venv may carry (older set-ups
    installed docker-compose 1.29 there without its dependencies, for its schema)."""
    venv_bin = Path(sys.prefix) / "bin"
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d) != venv_bin]
    return shutil.which("docker-compose", path=os.pathsep.join(dirs))


def role(service: dict[str, Any]) -> str | None:
    """The gvloop role of a compose service, `redis`, or None."""
    if str(service.get("image", "")).startswith("redis:"):
        return "redis"
    return ROLES.get(tuple(service.get("command", []))[:2])


def gvloop_services(compose: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(role, service) for every service that runs a gvloop command."""
    return [(r, s) for s in compose["services"].values() if (r := role(s)) not in {None, "redis"}]


def active_services(compose: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    """The services `docker compose --profile <profile> up` starts."""
    return {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles") or profile in service["profiles"]
    }


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class of the project (one per service, plus the shared one)."""
    classes = []
    for module_name in SETTINGS_MODULES:
        module = importlib.import_module(module_name)
        classes += [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, BaseSettings)
            and value.__module__ == module_name
        ]
    return classes


def env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable -> field name, for one settings class."""
    prefix = cls.model_config.get("env_prefix", "")
    names = {}
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names[(alias or f"{prefix}{field_name}").upper()] = field_name
    return names
