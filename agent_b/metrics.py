"""Prometheus metrics of the verifier, in a registry per app (tests build many apps)."""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class VerifierMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gvloop_verifier_requests_total",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gvloop_verifier_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_items = Histogram(
            "gvloop_verifier_batch_items",
            "Items per POST /verify/batch.",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.judge_batch = Histogram(
            "gvloop_verifier_judge_batch_size",
            "Judge prompts per forward pass (coalesced requests).",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.judge_seconds = Histogram(
            "gvloop_verifier_judge_forward_seconds",
            "Time of one batched judge forward pass.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.verifications = Counter(
            "gvloop_verifier_verifications_total",
            "Verified solutions by deciding method and verdict.",
            ["decided_by", "correct"],
            registry=self.registry,
        )
        self.errors = Counter(
            "gvloop_verifier_errors_total",
            "Failures inside the verifier (judge unavailable, comparison undecided, ...).",
            ["kind"],
            registry=self.registry,
        )

    def observe_judge_batch(self, size: int, seconds: float) -> None:
        self.judge_batch.observe(size)
        self.judge_seconds.observe(seconds)

    def render(self) -> bytes:
        """This app's series (and only them) in the Prometheus text format, for GET /metrics."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request, 4xx from the outer middleware included; paths
    that are not routes share one label so random URLs cannot blow up the series."""

    def __init__(self, app: ASGIApp, metrics: VerifierMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        code = 500

        async def send_status(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.requests.labels(route, str(code)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
