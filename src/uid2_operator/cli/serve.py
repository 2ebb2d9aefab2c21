"""``uid2-operator serve``: run the operator API."""

from __future__ import annotations

import click
import uvicorn

from uid2_operator.web.operator_api.app import create_operator_app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--init-if-new", is_flag=True, help="Initialise the data directory when it is new.")
def serve(host: str, port: int, init_if_new: bool) -> None:
    """Serve the operator API."""
    del init_if_new  # nothing to initialise until the credential store exists
    click.echo(f"uid2-operator listening on http://{host}:{port} (health: /ops/healthcheck)")
    uvicorn.run(create_operator_app(), host=host, port=port, log_level="warning")
