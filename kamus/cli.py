"""The ``kamus`` command."""

import sys
from typing import Literal

import click
from pydantic import ValidationError

from kamus import __version__
from kamus.logs import configure_logging
from kamus.providers import ConfigurationError
from kamus.settings import Settings

Service = Literal["encryptor", "decryptor"]


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # Never str(exc): pydantic quotes the offending input, which may be a secret.
        problems = "; ".join(f"{_setting_name(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise click.ClickException(f"invalid settings: {problems}") from None


def _setting_name(loc: tuple[int | str, ...]) -> str:
    """The environment name of a setting from a pydantic error location."""
    parts = [str(part) for part in loc]
    field = Settings.model_fields.get(parts[0]) if parts else None
    if field is not None and field.alias:
        parts[0] = field.alias
    return "__".join(parts)


@click.group()
@click.version_option(__version__, prog_name="kamus")
def main() -> None:
    """Kamus: Kubernetes-native secret encryption."""


@main.command()
@click.argument("service", type=click.Choice(["encryptor", "decryptor"]))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9090, show_default=True, type=click.IntRange(0, 65535))
def serve(service: Service, host: str, port: int) -> None:
    """Run the encryptor or the decryptor, configured from the environment (Kamus names)."""
    import uvicorn

    settings = load_settings()
    configure_logging(settings.logging.level)
    try:
        # Import only the service being started: the public encryptor process must never even
        # load the decryption endpoint.
        if service == "encryptor":
            from encryptor.app import create_app as create_encryptor

            app = create_encryptor(settings)
        else:
            from decryptor.app import create_app as create_decryptor

            app = create_decryptor(settings)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
    )


@main.command()
@click.option(
    "--state-dir",
    default=".kamus-dev",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the generated development key and token live (keep it out of git).",
)
@click.option("--encryptor-port", default=9090, show_default=True, type=click.IntRange(1, 65535))
@click.option("--decryptor-port", default=9091, show_default=True, type=click.IntRange(1, 65535))
def dev(state_dir: str, encryptor_port: int, decryptor_port: int) -> None:
    """Run both services on loopback with a generated key and a static token file."""
    from kamus.dev import run_dev

    sys.exit(run_dev(state_dir, encryptor_port, decryptor_port))
