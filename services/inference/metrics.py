"""Prometheus metrics of the inference service: latency per route and model version, batch sizes and
queue depth per model, the admission ceiling and refusals per route. Each app owns its registry, so
several apps in one process do not clash."""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.ceiling = Gauge(
            "recforge_inference_admission_ceiling",
            "Requests a route admits at once (the adaptive ceiling); more wait in line or answer 429.",
            ["route"],
            registry=self.registry,
        )
        self.no_queue = Gauge(
            "recforge_inference_admission_no_queue_seconds",
            "The least latency a route answered with lately: its service time with no queue.",
            ["route"],
            registry=self.registry,
        )
        self.catalog_indexes = Counter(
            "recforge_inference_catalog_indexes_total",
            "Catalog indexes a loaded retriever got, by where its embeddings came from: embedded here, an "
            "index job's files, or shared with a loaded version whose products the same graph embeds.",
            ["source"],
            registry=self.registry,
        )
        self.refused = Counter(
            "recforge_inference_refused_total",
            "Requests answered 429 before their body was read, by route.",
            ["route"],
            registry=self.registry,
        )

        self.impressions_written = Counter(
            "recforge_inference_impressions_written_total",
            "Impressions (what a request was served) written to Postgres.",
            registry=self.registry,
        )
        self.impressions_dropped = Counter(
            "recforge_inference_impressions_dropped_total",
            "Impressions not written: the buffer was full, the database refused them, or the service "
            "stopped first.",
            ["reason"],
            registry=self.registry,
        )
        self.impressions_buffered = Gauge(
            "recforge_inference_impressions_buffered",
            "Impressions waiting in memory to be written.",
            registry=self.registry,
        )

        self._routes: dict[str, set[str]] = {}  # model version -> the routes it answered

    def took(self, route: str, model_version: str, started: float) -> None:
        """Record a request's time since ``started`` (time.perf_counter()), by the version that answered."""
        self.latency.labels(route, model_version).observe(time.perf_counter() - started)
        self._routes.setdefault(model_version, set()).add(route)

    def catalog_index(self, source: str) -> None:
        self.catalog_indexes.labels(source).inc()

    def observe_batch(self, model: str, size: int, queued: int) -> None:
        self.batch_size.labels(model).observe(size)
        self.queue_depth.labels(model).set(queued)

    def forget(self, model_version: str, model: str) -> None:
        """A version left this replica: its series go, so a long-lived replica's /metrics does not grow
        with every version it ever served."""
        for route in self._routes.pop(model_version, ()):
            self.latency.remove(route, model_version)
        for family in (self.batch_size, self.queue_depth):
            with contextlib.suppress(KeyError):  # it never ran a batch
                family.remove(model)
