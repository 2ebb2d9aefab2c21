"""The ``uid2-operator`` command line. Commands are registered explicitly below."""

from __future__ import annotations

import click

from uid2_operator import __version__
from uid2_operator.cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="uid2-operator")
@click.option(
    "--data-dir",
    envvar="UID2_DATA_DIR",
    default="./data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the embedded SQLite database and local key files live.",
)
@click.option(
    "--database-url",
    envvar="UID2_DATABASE_URL",
    default=None,
    help="PostgreSQL URL; the embedded SQLite file under --data-dir is used when absent.",
)
@click.pass_context
def main(ctx: click.Context, data_dir: str, database_url: str | None) -> None:
    """UID2 Operator Service and credential administration."""
    ctx.obj = {"data_dir": data_dir, "database_url": database_url}


main.add_command(serve)
