"""Prometheus metrics of the generator API, in a registry per app (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENGINE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
VERIFY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SWAP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GeneratorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gvloop_generator_requests_total",
            "POST /problems requests, by outcome (ok, job, or the HTTP status of the refusal).",
            ["outcome"],
            registry=self.registry,
        )
        self.chat_requests = Counter(
            "gvloop_generator_chat_requests_total",
            "POST /v1/chat/completions requests, by outcome (ok, learned: with a reference "
            "answer, or the HTTP status of the refusal).",
            ["outcome"],
            registry=self.registry,
        )
        self.samples = Counter(
            "gvloop_generator_samples_total",
            "Generated and verified samples, by whether they entered the training queue.",
            ["queued"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "gvloop_generator_completion_tokens_total",
            "Tokens the engines generated for samples.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "gvloop_generator_problems_in_flight",
            "Problems being generated or verified.",
            registry=self.registry,
        )
        self.engine_seconds = Histogram(
            "gvloop_generator_engine_seconds",
            "Time for one chat completion (n samples of one problem).",
            buckets=ENGINE_BUCKETS,
            registry=self.registry,
        )
        self.verify_seconds = Histogram(
            "gvloop_generator_verify_seconds",
            "Time for agent B to score the samples of one problem.",
            buckets=VERIFY_BUCKETS,
            registry=self.registry,
        )
        self.swaps = Counter(
            "gvloop_generator_swaps_total",
            "Weight swaps, by outcome (ok, failed then recovered or not, abandoned before reload).",
            ["outcome"],
            registry=self.registry,
        )
        self.swap_seconds = Histogram(
            "gvloop_generator_swap_seconds",
            "Duration of each phase of a successful swap.",
            ["phase"],
            buckets=SWAP_BUCKETS,
            registry=self.registry,
        )
        self.stream_gap_seconds = Histogram(
            "gvloop_generator_stream_gap_seconds",
            "Longest wait between two chunks of each streamed chat completion, by whether a "
            "swap paused generation while it streamed (yes, no): the stall a client sees.",
            ["during_swap"],
            buckets=SWAP_BUCKETS,
            registry=self.registry,
        )
        self.weight_version = Gauge(
            "gvloop_generator_weight_version",
            "Weight version being served.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
