"""Joining or starting Ray: a cluster at RAY_ADDRESS (KubeRay), else a local one.

Ray 2.60 turns token auth on by default; a local loopback cluster turns it off. A local
cluster listens on 127.0.0.1 only: Ray replaces a loopback node address with the
machine's outward one (and its gRPC servers then listen on every interface) unless it
runs where it believes clusters are off, as on macOS. We tell it so for a local cluster.
"""

from __future__ import annotations

import os

import ray
from ray._private import ray_constants


def ensure_ray(num_cpus: int | None = None) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # What RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sets when read at import (too early to set here).
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")


def has_gpu() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
