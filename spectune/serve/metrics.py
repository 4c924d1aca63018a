"""The server's Prometheus metrics (GET /metrics), on a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("spectune_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("spectune_request_seconds", "Request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("spectune_time_to_first_token_seconds", "Time from arrival to the first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("spectune_prompt_tokens", "Prompt tokens of generation requests", registry=r)
        self.completion_tokens = Counter("spectune_completion_tokens", "Tokens generated", registry=r)
        self.drafted = Counter("spectune_draft_tokens", "Draft tokens proposed (speculative decoding)", registry=r)
        self.accepted = Counter("spectune_accepted_tokens", "Draft tokens the target accepted", registry=r)
        self.target_passes = Counter("spectune_target_passes", "Target forward passes per request, summed",
                                     registry=r)
        self.tau = Histogram("spectune_tau", "Tokens per target pass of each request (1 = no speculation gain)",
                             buckets=(1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8), registry=r)
        self.queue_depth = Gauge("spectune_queue_depth", "Generation requests waiting for a batch slot", registry=r)
        self.batch_rows = Gauge("spectune_batch_rows", "Requests being decoded together now", registry=r)

    def finished(self, prompt_tokens: int, m) -> None:
        """A generation request's engine figures (decode.engine.Metrics)."""
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(m.new_tokens)
        self.drafted.inc(m.drafted)
        self.accepted.inc(m.accepted)
        self.target_passes.inc(m.target_passes)
        if m.target_passes:
            self.tau.observe(m.tau)
