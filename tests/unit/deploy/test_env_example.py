""".env.example and the compose environment name real settings: every variable is a field of a
settings class (or a knob docker-compose.yml reads), reaches the services that read it, and
every container's environment is accepted by its settings classes."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from tests.unit.deploy.deploy_files import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    ROLE_PREFIX,
    ROLES,
    TEST_TOKENS,
    env_names,
    fallbacks,
    gvloop_services,
    load_compose,
    read_env_file,
    referenced_variables,
    settings_classes,
)

# Read by Compose itself rather than by a service.
COMPOSE_OWN = {"COMPOSE_PROFILES"}


@pytest.fixture(scope="module")
def example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(example) -> dict[str, Any]:
    return load_compose({**example, **TEST_TOKENS})


@pytest.fixture(scope="module")
def classes() -> dict[str, type[BaseSettings]]:
    """Settings prefix -> class: GVLOOP_ for the shared one, GVLOOP_ENGINE_, ..."""
    found = {str(cls.model_config.get("env_prefix", "")): cls for cls in settings_classes()}
    assert {"GVLOOP_", *ROLE_PREFIX.values()} <= set(found), sorted(found)
    return found


def class_for(variable: str, classes: dict[str, type[BaseSettings]]) -> type[BaseSettings]:
    """The class a GVLOOP_* variable belongs to: the longest matching prefix."""
    prefix = max((p for p in classes if variable.startswith(p)), key=len)
    return classes[prefix]


def build(cls: type[BaseSettings], env: dict[str, str], monkeypatch) -> BaseSettings:
    """The settings a process with exactly these GVLOOP_* variables would read."""
    for name in [n for n in os.environ if n.startswith("GVLOOP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cls(_env_file=None)  # type: ignore[call-arg]


def test_every_variable_is_a_setting_or_a_compose_knob(example, classes) -> None:
    known = {name for cls in classes.values() for name in env_names(cls)}
    used_by_compose = referenced_variables(COMPOSE_FILE.read_text()) | COMPOSE_OWN
    settings = [name for name in example if name.startswith("GVLOOP_")]
    knobs = [name for name in example if not name.startswith("GVLOOP_")]
    assert [name for name in settings if name not in known] == []
    assert [name for name in knobs if name not in used_by_compose] == []


def test_every_compose_variable_is_documented(example) -> None:
    assert referenced_variables(COMPOSE_FILE.read_text()) - set(example) == set()


def test_every_setting_is_documented_or_wired(example, classes) -> None:
    # wired: given a value by docker-compose.yml, not taken from the variable of that name
    wired = {
        name
        for _, service in gvloop_services(load_compose(None))
        for name, value in service["environment"].items()
        if name not in referenced_variables(str(value))
    }
    missing = [
        name
        for cls in classes.values()
        for name in env_names(cls)
        if name not in example and name not in wired
    ]
    assert missing == []


def test_example_values_are_the_defaults(example, classes, monkeypatch) -> None:
    """What .env.example shows is what applies without it: the compose file's fallback where
    it has one, else the settings class' default."""
    compose_defaults = fallbacks(COMPOSE_FILE.read_text())
    for name, value in example.items():
        (fallback,) = compose_defaults.get(name, {""})  # one fallback per variable
        if fallback:
            assert value == fallback, name
        elif name.startswith("GVLOOP_"):
            cls = class_for(name, classes)
            field = env_names(cls)[name]
            configured = build(cls, {name: value}, monkeypatch)
            assert getattr(configured, field) == cls.model_fields[field].get_default(
                call_default_factory=True
            ), name


def test_variables_reach_the_services_that_read_them(example) -> None:
    services = gvloop_services(load_compose(None))
    for name in [n for n in example if n.startswith("GVLOOP_")]:
        # a role's own prefix, or a shared setting that every gvloop service reads
        readers = [r for r, p in ROLE_PREFIX.items() if name.startswith(p)] or ROLES.values()
        for service_role, service in services:
            if service_role in readers:
                value = str(service["environment"].get(name, ""))
                assert referenced_variables(value) == {name}, (name, service_role)


def test_each_service_environment_is_accepted(compose, classes, monkeypatch) -> None:
    for service_role, service in gvloop_services(compose):
        env = {k: str(v) for k, v in service["environment"].items()}
        readers = [classes["GVLOOP_"]]
        if service_role in ROLE_PREFIX:
            readers.append(classes[ROLE_PREFIX[service_role]])
        known = {name for cls in readers for name in env_names(cls)}
        # a GVLOOP_* name no class of this service reads would be silently ignored
        assert [n for n in env if n.startswith("GVLOOP_") and n not in known] == []
        for cls in readers:
            build(cls, env, monkeypatch)


def test_every_variable_has_a_comment() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    bare = [
        line
        for before, line in zip(["", *lines], lines, strict=False)
        if "=" in line and not line.startswith("#") and not before.startswith("#")
    ]
    assert bare == []
