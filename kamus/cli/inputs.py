"""Reading what the commands are given (manifests, secret files, the decryptor's answers) so that
an error names where the input is wrong and never what it says there.

Parsers quote the offending line in their messages (PyYAML prints it with a caret under the
column; a codec names the byte), and that line is often the secret. Every error here carries
the source's name, a line and a column, and a generic reason; the parser's own message is
dropped.
"""

import json
from typing import Any

from kamus.cli.client import UsageError


class InputError(UsageError):
    """Input that cannot be parsed; its message never quotes the input."""


def line_and_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of the character at ``index``."""
    before = text[: max(index, 0)]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def _where(source: str, line: int, column: int) -> str:
    return f"{source}, line {line}, column {column}"


def decode_text(data: bytes, source: str, encoding: str = "utf-8") -> str:
    try:
        return data.decode(encoding)
    except LookupError:
        raise InputError(f"{encoding} is not a text encoding Python knows") from None
    except UnicodeDecodeError as exc:
        # The position of the first bad byte, counted in the text that decoded before it.
        good = data[: exc.start].decode(encoding, errors="replace")
        line, column = line_and_column(good, len(good))
        raise InputError(f"{_where(source, line, column)}: not valid {encoding} text") from None


def yaml_documents(text: str, source: str) -> list[Any]:
    """The documents of a YAML stream (safe types only), empty ones left out."""
    import yaml

    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is None:
            raise InputError(f"{source}: not valid YAML") from None
        where = _where(source, mark.line + 1, mark.column + 1)
        raise InputError(f"{where}: not valid YAML") from None
    except yaml.reader.ReaderError as exc:
        line, column = line_and_column(text, exc.position)
        raise InputError(f"{_where(source, line, column)}: not valid YAML") from None
    except yaml.YAMLError:
        raise InputError(f"{source}: not valid YAML") from None
    except RecursionError:
        raise InputError(f"{source}: not valid YAML (nested too deeply)") from None
    except (ValueError, TypeError, OverflowError):
        # Raised while building a value (a date like 2024-02-30), with the value in the message.
        raise InputError(
            f"{source}: not valid YAML (a value cannot be read; quote it to make it text)"
        ) from None


def json_document(data: bytes, source: str) -> Any:
    """One JSON document from UTF-8 bytes."""
    text = decode_text(data, source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{_where(source, exc.lineno, exc.colno)}: not valid JSON") from None
    except RecursionError:
        raise InputError(f"{source}: not valid JSON (nested too deeply)") from None
