"""The compose `monitoring` profile: Prometheus scrapes every gvloop service where it listens,
Grafana's provisioned dashboard reads that Prometheus and plots only metrics the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agent_a.metrics import GeneratorMetrics
from agent_b.metrics import VerifierMetrics
from tests.unit.deploy.deploy_files import (
    ENV_EXAMPLE,
    PROFILES,
    ROOT,
    TEST_TOKENS,
    active_services,
    load_compose,
    read_env_file,
    role,
)
from trainer.metrics import TrainerMetrics

DOCKER = ROOT / "docker"
SCRAPED_ROLES = ("engine", "generator", "verifier", "trainer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose({**read_env_file(ENV_EXAMPLE), **TEST_TOKENS})


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DOCKER / "grafana" / "dashboards" / "gvloop.json").read_text())


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can export, labelled series included before first use."""
    suffixes = {"counter": ("_total",), "histogram": ("_sum", "_count", "_bucket"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_monitoring_runs_only_when_asked(compose) -> None:
    for profile in PROFILES:
        assert not {"prometheus", "grafana"} & active_services(compose, profile).keys()
    monitoring = active_services(compose, "monitoring")
    assert {"prometheus", "grafana"} <= monitoring.keys()
    assert monitoring["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_mounted_files_are_in_the_repository(compose) -> None:
    for name in ("prometheus", "grafana"):
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_prometheus_scrapes_each_service_where_it_listens(compose) -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    assert sorted(targets) == sorted(SCRAPED_ROLES)
    for profile in PROFILES:
        for name, service in active_services(compose, profile).items():
            if (service_role := role(service)) not in SCRAPED_ROLES:
                continue
            (port,) = service["expose"]
            # the CPU services answer to the GPU ones' names through network aliases
            networks = service["networks"]
            aliases = networks["backend"]["aliases"] if isinstance(networks, dict) else []
            assert targets[service_role] == [f"{service_role}:{port}"], name
            assert service_role == name or service_role in aliases, name
            assert "backend" in networks  # Prometheus's network


def test_grafana_reads_the_provisioned_prometheus(compose, dashboard) -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (port,) = compose["services"]["prometheus"]["expose"]
    assert source["url"] == f"http://prometheus:{port}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "gvloop.yml").read_text())[
        "providers"
    ]
    mounts = dict(v.split(":")[1::-1] for v in compose["services"]["grafana"]["volumes"])
    assert mounts[provider["options"]["path"]] == "./docker/grafana/dashboards"
    for panel in dashboard["panels"]:
        uids = {panel["datasource"]["uid"]} | {t["datasource"]["uid"] for t in panel["targets"]}
        assert uids == {source["uid"]}, panel["title"]


def test_dashboard_plots_only_exported_metrics_and_the_consoles_figures(
    dashboard, tmp_path: Path
) -> None:
    exported = (
        exported_names(GeneratorMetrics().registry)
        | exported_names(VerifierMetrics().registry)
        | exported_names(TrainerMetrics(tmp_path / "metrics.jsonl").registry)
    )
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b(gvloop_[a-z_]+|vllm:[a-z_:]+)", target["expr"]))
    gvloop_used = {name for name in used if name.startswith("gvloop_")}
    assert gvloop_used <= exported, gvloop_used - exported
    # what `gvloop up`'s panel shows: generation, served version, queue, the trainer, swaps
    for figure in (
        "gvloop_generator_samples_total",
        "gvloop_generator_weight_version",
        "gvloop_trainer_queue_lag",
        "gvloop_trainer_step",
        "gvloop_trainer_loss",
        "gvloop_trainer_accuracy",
        "gvloop_trainer_tokens_per_second",
        "gvloop_trainer_learning_rate",
        "gvloop_generator_swap_seconds_sum",
    ):
        assert figure in used, figure
    # panels do not overlap on Grafana's 24-column grid
    cells = set()
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(box["x"], box["x"] + box["w"])
            for y in range(box["y"], box["y"] + box["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine
