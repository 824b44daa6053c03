"""Prometheus metrics of one app (its own registry, so several apps in one process don't collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("asset_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("asset_request_latency_seconds", "request latency by route", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.batch_size = Histogram("asset_batch_size", "images per backend call (dynamic batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.queue_depth = Gauge("asset_queue_depth", "requests waiting for the batcher", registry=self.registry)
        self.model_load = Gauge("asset_model_load_seconds", "time to load and warm the model", registry=self.registry)
        self.images = Counter("asset_images_total", "images predicted, by decision", ["decision"], registry=self.registry)
