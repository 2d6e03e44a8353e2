"""Joining or starting Ray: a cluster at RAY_ADDRESS (KubeRay), else a local one.

Ray 2.60 turns token auth on by default; a local loopback cluster turns it off. Ray
picks its own node address (here it does not honour 127.0.0.1 and listens on all
interfaces): run the local cluster only on a machine you trust."""

from __future__ import annotations

import os

import ray


def ensure_ray(num_cpus: int | None = None) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")


def has_gpu() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
