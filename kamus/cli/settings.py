"""The services' settings as the commands read them: an invalid setting is a one-line error that
names it, never a traceback or the value (which may be a secret)."""

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from kamus.server.settings import Settings

# The settings module (pydantic) loads only in the commands that read settings: `kamus init` runs
# at every pod start and reads none.


def load_settings() -> "Settings":
    from pydantic import ValidationError

    from kamus.server.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        # Never str(exc): pydantic quotes the offending input, which may be a secret.
        problems = "; ".join(f"{_setting_name(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise click.ClickException(f"invalid settings: {problems}") from None


def _setting_name(loc: tuple[int | str, ...]) -> str:
    """The environment name of a setting from a pydantic error location."""
    from kamus.server.settings import Settings

    parts = [str(part) for part in loc]
    field = Settings.model_fields.get(parts[0]) if parts else None
    if field is not None and field.alias:
        parts[0] = field.alias
    return "__".join(parts)
