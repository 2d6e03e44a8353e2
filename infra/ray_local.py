"""Joining or starting Ray: a cluster at RAY_ADDRESS (KubeRay), else a local one.

Ray 2.60 turns token auth on by default; a local loopback cluster turns it off. A local
cluster listens on 127.0.0.1 only. Ray replaces a loopback address with the machine's
outward one (for the node it starts, and for a cluster address it joins), and its gRPC
servers then listen on every interface, unless it runs where it believes clusters are off,
as on macOS. We tell it so for a local cluster and for a driver joining one on loopback.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import ray
from ray._private import ray_constants

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def ensure_ray(num_cpus: int | None = None) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if not address or is_loopback(address):  # e.g. the demo's learner joins the demo's cluster
        _stay_on_loopback()
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")


def is_loopback(address: str) -> bool:
    """Whether a Ray address ("host:port" or "ray://host:port") names this machine's loopback."""
    return urlsplit(address if "://" in address else f"//{address}").hostname in LOOPBACK_HOSTS


def _stay_on_loopback() -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # processes started from here read it at import
    ray_constants.ENABLE_RAY_CLUSTER = False  # this one has read it already


def has_gpu() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
