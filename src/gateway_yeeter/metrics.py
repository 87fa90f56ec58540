"""Prometheus metrics, all in the ``gateway_yeeter_`` namespace, on a registry of their own.

A registry per server keeps tests that run several servers in one process apart, and keeps the
exposition free of the client library's process collectors unless asked for.
"""

from __future__ import annotations

import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.process_collector import ProcessCollector

from gateway_yeeter.admission import Outcome
from gateway_yeeter.targeting import PodKind

NAMESPACE = "gateway_yeeter"

# An admission takes about a hundred microseconds of CPU; the upper buckets catch a starved
# event loop long before the API server's timeout turns it into a failed call.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10)


class Metrics:
    """The webhook's metrics; label values are bound once so the hot path does no lookups."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The *_created series double the exposition and say only when the process started.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        ProcessCollector(namespace=NAMESPACE, registry=self.registry)

        self.requests = Counter(
            "admission_requests",
            "Requests to /mutate, by outcome (or bad_request) and HTTP status code.",
            ["result", "code"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.duration = Histogram(
            "admission_duration_seconds",
            "Time from a complete /mutate request body to its answer.",
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.in_flight = Gauge(
            "admission_requests_in_flight",
            "Requests to /mutate being read or answered.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.routes_removed = Counter(
            "default_routes_removed",
            "default-route keys removed from network selection elements, by pod kind.",
            ["pod_kind"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.unparsable = Counter(
            "unparsable_annotations",
            "Networks annotations left unchanged because they were not a JSON list, by pod kind.",
            ["pod_kind"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "serving_certificate_expiry_timestamp_seconds",
            "Unix time at which the serving certificate in service expires.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.certificate_reloads = Counter(
            "certificate_reloads",
            "Attempts to load a changed serving certificate, by result.",
            ["result"],
            namespace=NAMESPACE,
            registry=self.registry,
        )

        self._allowed = {outcome: self.requests.labels(str(outcome), "200") for outcome in Outcome}
        self._routes_removed = {kind: self.routes_removed.labels(str(kind)) for kind in PodKind}
        self._unparsable = {kind: self.unparsable.labels(str(kind)) for kind in PodKind}
        for result in ("success", "failure"):
            self.certificate_reloads.labels(result)
        for code in ("400", "405", "413"):
            self.requests.labels("bad_request", code)

    def count_decision(self, outcome: Outcome, pod_kind: PodKind | None, removed: int) -> None:
        self._allowed[outcome].inc()
        if pod_kind is None:
            return
        if removed:
            self._routes_removed[pod_kind].inc(removed)
        elif outcome is Outcome.UNPARSABLE:
            self._unparsable[pod_kind].inc()

    def count_bad_request(self, code: int) -> None:
        self.requests.labels("bad_request", str(code)).inc()

    def certificate_in_service(self, not_after: datetime.datetime) -> None:
        self.certificate_expiry.set(not_after.timestamp())

    def certificate_reloaded(self, *, success: bool) -> None:
        self.certificate_reloads.labels("success" if success else "failure").inc()
