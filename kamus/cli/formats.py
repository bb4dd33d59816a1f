"""The output formats of ``kamus init``: one list for the option, the command itself and the
injector (injector/pods.py). A module of its own, so that they need not load ``kamus init``."""

from typing import Literal, get_args

OutputFormat = Literal["json", "cfg", "cfg-strict", "files", "custom", "env"]
FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
# The custom format's Jinja2 template: the file of this name in an encrypted folder.
TEMPLATE_FILE = "template.j2"
