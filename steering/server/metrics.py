"""Prometheus metrics of one server, in a registry of its own.

A private ``CollectorRegistry`` (not the process-global one) lets several
servers live in one process, as they do in the tests. ``GET /metrics``
returns `ServerMetrics.render` in the Prometheus text format.

=====================================  =========  ===================================
name                                   kind       what
=====================================  =========  ===================================
steering_http_requests_total           counter    HTTP requests by route and status
steering_generations_total             counter    completions by finish reason
steering_steered_generations_total     counter    completions that carried steering
steering_prompt_tokens_total           counter    prompt tokens prefilled
steering_completion_tokens_total       counter    tokens generated
steering_batch_size                    histogram  rows per decode pass
steering_request_latency_seconds       histogram  submit to last token
steering_time_to_first_token_seconds   histogram  submit to first token
steering_queue_waiting                 gauge      requests waiting for a batch slot
steering_batch_running                 gauge      rows in the running batch
=====================================  =========  ===================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServerMetrics:
    """The counters, gauges and histograms the engine and the app update."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("steering_http_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.generations = Counter("steering_generations", "Completions by finish reason.", ["finish_reason"], registry=r)
        self.steered = Counter("steering_steered_generations", "Completions that carried steering.", registry=r)
        self.prompt_tokens = Counter("steering_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.completion_tokens = Counter("steering_completion_tokens", "Tokens generated.", registry=r)
        self.batch_size = Histogram("steering_batch_size", "Rows per decode pass.", buckets=_BATCH_BUCKETS, registry=r)
        self.latency = Histogram("steering_request_latency_seconds", "Submit to last token.", buckets=_LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("steering_time_to_first_token_seconds", "Submit to first token.", buckets=_LATENCY_BUCKETS, registry=r)
        self.waiting = Gauge("steering_queue_waiting", "Requests waiting for a batch slot.", registry=r)
        self.running = Gauge("steering_batch_running", "Rows in the running batch.", registry=r)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
