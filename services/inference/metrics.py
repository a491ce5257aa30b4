"""Prometheus metrics of the inference service: latency per route and model version, batch sizes and
queue depth per model. Each app owns its registry, so several apps in one process do not clash."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class InferenceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "recforge_inference_request_seconds",
            "Time to answer a request, by route and the model version that answered.",
            ["route", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "recforge_inference_batch_size",
            "Items per model run (coalesced requests).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "recforge_inference_queue_depth",
            "Items waiting for a model run.",
            ["model"],
            registry=self.registry,
        )

    def observe_batch(self, model: str, size: int, queued: int) -> None:
        self.batch_size.labels(model).observe(size)
        self.queue_depth.labels(model).set(queued)
