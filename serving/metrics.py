"""Prometheus metrics of a serving replica (exposed on GET /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("gensar_serve_requests_total", "Requests answered, by endpoint and HTTP status", ["endpoint", "status"])
LATENCY = Histogram("gensar_serve_latency_seconds", "Request latency, by endpoint", ["endpoint"],
                    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
MODEL_VERSION = Gauge("gensar_serve_model_version_info", "1 for the version serving each task",
                      ["task", "version", "idmap_version"])
BATCH_SIZE = Histogram("gensar_serve_batch_size", "Queries decoded per batch", ["task"], buckets=(1, 2, 4, 8, 16, 32, 64))
SWAPS = Counter("gensar_serve_swaps_total", "Versions swapped in, by task", ["task"])
SWAP_LOAD = Histogram("gensar_serve_swap_load_seconds", "Building a version beside the serving one (fetch, merge, map, "
                      "constraint, warm-up)", ["task"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
REFRESH_ERRORS = Counter("gensar_serve_refresh_errors_total", "Registry reads that failed while following it "
                         "(the serving version stays; a version that fails to load is counted as refused)")
REPLICA = Gauge("gensar_serve_replica_info", "1, labelled with the Serve replica these metrics are of", ["replica"])
REFUSED_VERSIONS = Counter("gensar_serve_refused_versions_total", "Versions the loader refused to serve (the serving "
                           "version stays), by reason: corrupt, unknown, wrong-base, map-missing, layout, load-failed",
                           ["reason"])
USER_STATE_ERRORS = Counter("gensar_serve_user_state_errors_total", "User-state reads that failed or timed out "
                            "(answered as for a user without history)")
USER_STATE_SECONDS = Histogram("gensar_serve_user_state_seconds", "User-state read latency",
                               buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1))
ITEMS_ADDED = Counter("gensar_serve_items_added_total", "Items added or re-titled from the items topic while serving")
ITEMS_INVALID = Counter("gensar_serve_items_invalid_total", "Item records on the items topic that failed validation")
ADMIN_AUTH_FAILURES = Counter("gensar_serve_admin_auth_failures_total", "Admin requests refused before anything else "
                              "was read, by reason: disabled (no token configured), missing, wrong", ["reason"])
