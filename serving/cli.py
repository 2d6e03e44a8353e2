"""`gensar serve`: run the Serve application on this machine (or the Ray cluster at
RAY_ADDRESS) until interrupted. Heavy imports stay inside the command."""

from __future__ import annotations

import time
from typing import Optional

import typer
from rich.console import Console

console = Console()


def serve(
    replicas: Optional[int] = typer.Option(None, help="Replicas (default GENSAR_SERVING__REPLICAS)."),
    port: Optional[int] = typer.Option(None, help="HTTP port (default GENSAR_SERVING__PORT)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (default GENSAR_SERVING__DEVICE)."),
) -> None:
    """Answer /search and /recommend with Ray Serve, following the model registry."""
    import ray
    from ray import serve as ray_serve

    from infra.ray_local import ensure_ray
    from serving.app import build
    from serving.settings import ServingSettings

    overrides = {k: v for k, v in {"replicas": replicas, "port": port, "device": device}.items() if v is not None}
    settings = ServingSettings(**overrides)
    ensure_ray()
    ray_serve.start(http_options={"host": settings.host, "port": settings.port})
    with console.status("loading the base model and the serving versions"):
        ray_serve.run(build(overrides), name="gensar", route_prefix="/")
    console.print(f"serving on http://{settings.host}:{settings.port} ({settings.replicas} replica(s)); "
                  f"API spec at /docs; Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.shutdown()
        ray.shutdown()
