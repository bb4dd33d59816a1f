"""The output formats of ``kamus init``: one list for the option and for the command itself.
A module of its own, so that the option can list them without loading ``kamus init``."""

from typing import Literal, get_args

OutputFormat = Literal["json", "cfg", "cfg-strict", "files", "custom", "env"]
FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
