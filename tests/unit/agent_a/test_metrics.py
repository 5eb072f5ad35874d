"""The generator's metrics live in a registry per app, so apps built side by side (tests, a
second generator in one process) neither collide nor count each other's events."""

from __future__ import annotations

from agent_a.metrics import GeneratorMetrics


def test_each_instance_counts_on_its_own() -> None:
    first, second = GeneratorMetrics(), GeneratorMetrics()
    first.swaps.labels("ok").inc()
    value = "gvloop_generator_swaps_total"
    assert first.registry.get_sample_value(value, {"outcome": "ok"}) == 1.0
    assert second.registry.get_sample_value(value, {"outcome": "ok"}) is None


def test_render_names_every_metric() -> None:
    text = GeneratorMetrics().render().decode()
    for name in (
        "gvloop_generator_requests_total",
        "gvloop_generator_samples_total",
        "gvloop_generator_completion_tokens_total",
        "gvloop_generator_problems_in_flight",
        "gvloop_generator_engine_seconds",
        "gvloop_generator_verify_seconds",
        "gvloop_generator_swaps_total",
        "gvloop_generator_swap_seconds",
        "gvloop_generator_weight_version",
    ):
        assert f"# TYPE {name} " in text
