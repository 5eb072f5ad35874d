"""Prometheus metrics of the generator API, served at GET /metrics beside the log lines."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "gvloop_generator_requests_total",
    "POST /problems requests, by outcome (ok, job, or the HTTP status of the refusal).",
    ["outcome"],
)
SAMPLES = Counter(
    "gvloop_generator_samples_total",
    "Generated and verified samples, by whether they entered the training queue.",
    ["queued"],
)
COMPLETION_TOKENS = Counter(
    "gvloop_generator_completion_tokens_total", "Tokens the engines generated for samples."
)
IN_FLIGHT = Gauge("gvloop_generator_problems_in_flight", "Problems being generated or verified.")
ENGINE_SECONDS = Histogram(
    "gvloop_generator_engine_seconds",
    "Time for one chat completion (n samples of one problem).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
VERIFY_SECONDS = Histogram(
    "gvloop_generator_verify_seconds",
    "Time for agent B to score the samples of one problem.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SWAPS = Counter(
    "gvloop_generator_swaps_total",
    "Weight swaps, by outcome (ok, failed then recovered or not, abandoned before reload).",
    ["outcome"],
)
SWAP_SECONDS = Histogram(
    "gvloop_generator_swap_seconds",
    "Duration of each phase of a successful swap.",
    ["phase"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEIGHT_VERSION = Gauge("gvloop_generator_weight_version", "Weight version being served.")
