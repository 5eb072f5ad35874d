"""docker-compose.yml is a valid compose file whose service graph comes up in order: checked
against the compose JSON schema and, per profile, by `docker compose config` where Docker
Compose is installed (the plugin, or Debian's docker-compose), else by the schema and the
references Compose checks beyond it.

compose-spec.json beside this file: compose-spec/compose-spec's schema/compose-spec.json at commit
170098ba07d9f53c383a41bfd4c5166b0a4529a6 (last changed in a08f8d51, October 2025)."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from typing import Any

import jsonschema
import pytest

from tests.unit.deploy.deploy_files import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    PROFILES,
    ROOT,
    TEST_TOKENS,
    InterpolationError,
    active_services,
    compose_schema,
    gvloop_services,
    interpolate,
    load_compose,
    read_env_file,
    role,
    system_docker_compose,
)

GPU_ROLES = {"engine", "verifier", "trainer"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose({**read_env_file(ENV_EXAMPLE), **TEST_TOKENS})


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = compose_schema()
    jsonschema.Draft7Validator.check_schema(schema)  # its $schema: draft-07
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


class TestSchema:
    def test_compose_file_is_valid(self, validator, compose) -> None:
        assert schema_errors(validator, compose) == []

    @pytest.mark.parametrize(
        "break_it",
        [
            # a misspelt key in a service
            lambda doc: doc["services"]["redis"].update(helthcheck={"test": ["CMD", "true"]}),
            # a depends_on condition Compose does not know
            lambda doc: doc["services"]["generator"]["depends_on"]["engine"].update(
                condition="service_ready"
            ),
            # a healthcheck interval without its unit (the schema takes strings for numbers,
            # as interpolation yields them, but a duration must be a string)
            lambda doc: doc["services"]["redis"]["healthcheck"].update(interval=10),
        ],
        ids=["misspelt-key", "unknown-condition", "interval-not-a-duration"],
    )
    def test_schema_rejects_a_broken_file(self, validator, compose, break_it) -> None:
        broken = copy.deepcopy(compose)
        break_it(broken)
        assert schema_errors(validator, broken)

    def test_missing_token_is_refused_with_its_name(self) -> None:
        env = {**read_env_file(ENV_EXAMPLE), **TEST_TOKENS, "GVLOOP_GENERATOR_API_TOKEN": ""}
        with pytest.raises(InterpolationError, match="GVLOOP_GENERATOR_API_TOKEN"):
            load_compose(env)

    def test_interpolation_follows_compose_rules(self) -> None:
        env = {"SET": "x", "EMPTY": ""}
        cases = {
            "${SET}": "x",
            "${UNSET}": "",
            "${EMPTY:-d}": "d",  # `:-` also replaces an empty value
            "${EMPTY-d}": "",  # `-` replaces only an unset one
            "${UNSET-d}": "d",
            "$$SET": "$SET",  # `$$` escapes
            "a-${SET}-$SET": "a-x-x",
        }
        assert {raw: interpolate(raw, env) for raw in cases} == cases


@functools.cache
def docker_compose() -> tuple[str, ...] | None:
    """`docker compose` where Docker has the plugin, else Debian's docker-compose, else None."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return (docker, "compose")
    legacy = system_docker_compose()
    return None if legacy is None else (legacy,)


def undefined_references(doc: dict[str, Any]) -> list[str]:
    """What Compose refuses that the schema lets through: a service naming a network, a named
    volume or a service the file (under the profile rendered) does not define."""
    errors = []
    for name, service in doc["services"].items():
        for network in service.get("networks", []):
            if network not in doc.get("networks", {}):
                errors.append(f"{name}: undefined network {network!r}")
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source = volume.get("source") if volume.get("type") == "volume" else None
            else:  # source:target[:mode]; a bare target is an anonymous volume
                source = volume.split(":")[0] if ":" in volume else None
            if source and not source.startswith((".", "/", "~")):
                if source not in doc.get("volumes", {}):
                    errors.append(f"{name}: undefined volume {source!r}")
        for target in service.get("depends_on", []):
            if target not in doc["services"]:
                errors.append(f"{name}: depends on undefined service {target!r}")
    return errors


def compose_config_errors(profile: str, validator: jsonschema.Draft7Validator) -> list[str]:
    """What `docker compose config` finds wrong with the file under `profile`; without Docker
    Compose, the schema's and `undefined_references`' findings on the services it starts."""
    if (command := docker_compose()) is not None:
        env = {**os.environ, **TEST_TOKENS, "COMPOSE_PROFILES": profile}
        args = [*command, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "-q"]
        result = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        return [result.stderr or f"exit status {result.returncode}"] if result.returncode else []
    doc = load_compose({**read_env_file(ENV_EXAMPLE), **TEST_TOKENS})
    doc["services"] = active_services(doc, profile)
    return schema_errors(validator, doc) + undefined_references(doc)


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_config_accepts_each_profile(profile: str, validator) -> None:
    assert compose_config_errors(profile, validator) == []


@pytest.mark.parametrize(
    ("break_it", "error"),
    [
        (
            lambda doc: doc["services"]["redis"].update(networks=["frontend"]),
            "redis: undefined network 'frontend'",
        ),
        (
            lambda doc: doc["services"]["redis"].update(volumes=["cache:/data"]),
            "redis: undefined volume 'cache'",
        ),
        # the CPU generator waiting on the GPU engine, which its profile does not start
        (
            lambda doc: doc["services"]["generator-cpu"]["depends_on"].update(
                engine={"condition": "service_healthy"}
            ),
            "generator-cpu: depends on undefined service 'engine'",
        ),
    ],
    ids=["network", "volume", "dependency-out-of-profile"],
)
def test_undefined_references_are_found(compose, break_it, error: str) -> None:
    broken = copy.deepcopy(compose)
    break_it(broken)
    broken["services"] = active_services(broken, "cpu")
    assert undefined_references(broken) == [error]


class TestServiceGraph:
    def test_each_profile_runs_the_whole_pipeline(self, compose) -> None:
        for profile in PROFILES:
            roles = sorted(str(role(s)) for s in active_services(compose, profile).values())
            assert roles == sorted(["redis", "model", "engine", "generator", "verifier", "trainer"])

    def test_commands_are_gvloop_commands(self, compose) -> None:
        from typer.testing import CliRunner

        from gvloop.cli import app

        for command in {tuple(service["command"]) for _, service in gvloop_services(compose)}:
            result = CliRunner().invoke(app, [*command, "--help"])
            assert result.exit_code == 0, (command, result.output)

    def test_long_running_services_have_healthchecks(self, compose) -> None:
        for name, service in compose["services"].items():
            if role(service) == "model":  # one-shot: it exits when the model is ready
                assert service.get("restart", "no") == "no", name
            else:
                assert service["healthcheck"]["test"], name
                assert service["restart"] in {"unless-stopped", "on-failure"}, name

    def test_each_service_listens_where_it_is_probed_and_published(self, compose) -> None:
        port_setting = {
            "engine": "GVLOOP_ENGINE_PORT",
            "generator": "GVLOOP_GENERATOR_PORT",
            "verifier": "GVLOOP_VERIFIER_PORT",
            "trainer": "GVLOOP_TRAINER_METRICS_PORT",
        }
        for name, service in compose["services"].items():
            if (service_role := role(service)) in port_setting:
                (port,) = service["expose"]
                assert service["environment"][port_setting[service_role]] == port, name
                assert f"127.0.0.1:{port}/" in " ".join(service["healthcheck"]["test"]), name
                for published in service.get("ports", []):
                    assert published.endswith(f":{port}"), name

    def test_dependencies_exist_in_the_same_profile_and_wait_for_health(self, compose) -> None:
        for profile in PROFILES:
            active = active_services(compose, profile)
            for name, service in active.items():
                for target, how in service.get("depends_on", {}).items():
                    # Compose refuses a dependency its profiles leave out
                    assert target in active, f"{profile}: {name} -> {target}"
                    expected = (
                        "service_completed_successfully"
                        if role(active[target]) == "model"
                        else "service_healthy"
                    )
                    assert how == {"condition": expected}, f"{name} -> {target}"

    def test_start_order(self, compose) -> None:
        for profile in PROFILES:
            by_role = {role(s): s for s in active_services(compose, profile).values()}
            needs = {
                r: {role(compose["services"][t]) for t in s.get("depends_on", {})}
                for r, s in by_role.items()
            }
            assert needs["engine"] == {"model"}
            assert needs["generator"] >= {"redis", "engine", "verifier"}
            assert needs["trainer"] >= {"redis", "generator"}

    def test_checkpoints_shared_at_one_path(self, compose) -> None:
        for profile in PROFILES:
            mounts = set()
            for service in active_services(compose, profile).values():
                if role(service) in {"engine", "generator", "trainer"}:
                    path = service["environment"]["GVLOOP_CHECKPOINT_DIR"]
                    volume = [v for v in service["volumes"] if v.endswith(f":{path}")]
                    assert len(volume) == 1, service["command"]
                    mounts.add(volume[0])
            assert len(mounts) == 1, mounts  # same volume, same path, in all three
            assert mounts.pop().split(":")[0] in compose["volumes"]

    def test_only_the_apis_and_the_dashboard_publish_ports(self, compose) -> None:
        for name, service in compose["services"].items():
            if service.get("ports") and name != "grafana":
                assert role(service) in {"generator", "verifier"}, name
        # Grafana lets anyone who reaches it view: on the loopback address only
        assert compose["services"]["grafana"]["ports"] == ["127.0.0.1:3000:3000"]

    def test_engine_is_reachable_on_the_private_network(self, compose) -> None:
        for service in compose["services"].values():
            if role(service) == "engine":
                assert service["expose"] == ["8000"]
                assert "backend" in service["networks"]

    def test_gpu_services_reserve_gpus_and_cpu_ones_do_not(self, compose) -> None:
        for profile in PROFILES:
            for name, service in active_services(compose, profile).items():
                devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
                gpus = [d for d in devices.get("devices", []) if "gpu" in d["capabilities"]]
                assert bool(gpus) == (profile == "gpu" and role(service) in GPU_ROLES), name

    def test_profiles_build_their_own_image(self, compose) -> None:
        for service in compose["services"].values():
            if role(service) is not None and role(service) != "redis":
                (profile,) = service["profiles"]
                assert service["build"]["args"] == {"DEVICE": profile}

    def test_redis_is_durable(self, compose) -> None:
        (redis,) = [s for s in compose["services"].values() if role(s) == "redis"]
        command = " ".join(redis["command"])
        assert "--appendonly yes" in command and "--appendfsync always" in command
        assert any(v.split(":")[1] == "/data" for v in redis["volumes"])
        assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
        assert "ports" not in redis
