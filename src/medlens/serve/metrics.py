"""Prometheus metrics of the server (prometheus-client), one registry per app.

``medlens_requests_total{model,status}``, ``medlens_request_seconds{model}`` (latency, end to
end in the server), ``medlens_batch_size{model}``, ``medlens_queue_wait_seconds{model}``,
``medlens_predict_seconds{model}`` (a batch's predictor call) and ``medlens_queue_depth{model}``
(requests waiting, read when scraped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Metrics"]

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, models: dict[str, Any]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "medlens_requests", "Prediction requests answered", ["model", "status"], registry=r
        )
        self.latency = Histogram(
            "medlens_request_seconds",
            "Prediction request latency",
            ["model"],
            buckets=LATENCY,
            registry=r,
        )
        self.batch = Histogram(
            "medlens_batch_size",
            "Images per predictor call",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.wait = Histogram(
            "medlens_queue_wait_seconds",
            "Time queued before the batch ran",
            ["model"],
            buckets=LATENCY,
            registry=r,
        )
        self.compute = Histogram(
            "medlens_predict_seconds",
            "A batch's predictor call",
            ["model"],
            buckets=LATENCY,
            registry=r,
        )
        depth = Gauge("medlens_queue_depth", "Requests waiting", ["model"], registry=r)
        for name, model in models.items():
            depth.labels(name).set_function(
                lambda model=model: 0 if model.batcher is None else model.batcher.depth
            )

    def request(self, model: str, status: int, seconds: float) -> None:
        self.requests.labels(model, str(status)).inc()
        self.latency.labels(model).observe(seconds)

    def observer(self, model: str) -> Callable[[int, list[float], float], None]:
        def observe(size: int, waits: list[float], seconds: float) -> None:
            self.batch.labels(model).observe(size)
            self.compute.labels(model).observe(seconds)
            for wait in waits:
                self.wait.labels(model).observe(wait)

        return observe

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
