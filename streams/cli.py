"""`gensar streams`: run stream workers, read the user state they keep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Optional

import typer
from rich.console import Console

from gensar.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Faust stream workers: user state, training samples, dead letters.")
console = Console()


@app.command()
def run(
    workers: int = typer.Option(1, min=1, max=64, help="Worker processes to run here (each with its own store and ports)."),
    worker_name: Optional[str] = typer.Option(None, help="This worker's name (its store directory)."),
    web_port: Optional[int] = typer.Option(None, help="Port of the table read API (worker i uses port + i)."),
    metrics_port: Optional[int] = typer.Option(None, help="Prometheus port, 0 to disable (worker i uses port + i)."),
    guarantee: Optional[str] = typer.Option(None, help="exactly_once or at_least_once."),
) -> None:
    """Run stream workers in the foreground until interrupted (SIGTERM/SIGINT stop cleanly)."""
    from streams.settings import StreamSettings
    from streams.worker import run_worker

    overrides = {k: v for k, v in dict(worker_name=worker_name, web_port=web_port, metrics_port=metrics_port,
                                        processing_guarantee=guarantee).items() if v is not None}
    streams = StreamSettings(**overrides)
    if workers == 1:
        run_worker(Settings(), streams)
        return
    children = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "streams", "run", "--worker-name", f"{streams.worker_name}-{i}",
               "--web-port", str(streams.web_port + i),
               "--metrics-port", str(streams.metrics_port + i if streams.metrics_port else 0),
               "--guarantee", streams.processing_guarantee]
        children.append(subprocess.Popen(cmd, env=os.environ.copy()))
    console.print(f"{workers} stream workers started (pids {', '.join(str(c.pid) for c in children)})")

    def forward(signum, _frame):
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    raise typer.Exit(max(codes, key=abs))


@app.command()
def history(user_id: str, url: str = typer.Option("http://127.0.0.1:6066", help="Any worker's read API.")) -> None:
    """Print a user's current histories, as serving reads them."""
    from streams.client import UserStateClient

    state = UserStateClient(url).history(user_id)
    if state is None:
        console.print(f"no events of user {user_id!r}")
        raise typer.Exit(1)
    console.print_json(state.model_dump_json())
