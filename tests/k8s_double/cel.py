"""CEL for the Kubernetes API double's admission: the expressions of webhooks' ``matchConditions``
and of ValidatingAdmissionPolicies, evaluated with cel-python (the standard CEL library and
macros: ``has``, ``all``, ``exists``, ``matches``, ``startsWith``...).

Not modelled: Kubernetes' own CEL libraries (``authorizer``, ``quantity``, ``url``, ``ip``,
``format``, the list and regex extensions such as ``lowerAscii`` or ``find``), type checking
before evaluation (an ill-typed expression fails when it runs, not when the object is created),
and the cost budget.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

# cel-python logs every step of every evaluation at DEBUG (and tests run with the root logger
# at DEBUG): a page of log per expression.
logging.getLogger("celpy").setLevel(logging.INFO)


class CelError(Exception):
    """An expression that does not compile or fails to evaluate, worded for the Status."""


@functools.lru_cache(maxsize=512)
def _program(expression: str) -> celpy.Runner:
    environment = celpy.Environment()
    try:
        return environment.program(environment.compile(expression))
    except CELParseError as exc:
        raise CelError(f"compilation failed: {exc}") from None


def to_cel(value: Any) -> Any:
    """A JSON value (an object as the API serves it) as CEL values."""
    return json_to_cel(value)


def lazy_variables(definitions: list[tuple[str, str]], base: Mapping[str, Any]) -> celtypes.MapType:
    """A policy's ``variables`` in order, each seeing the ones before it. One that fails is
    kept as its error, so only the expressions that use it fail, as in the apiserver."""
    variables = celtypes.MapType({})
    for name, expression in definitions:
        activation = {**base, "variables": variables}
        value: Any
        try:
            value = _program(expression).evaluate(activation)
        except CELEvalError as exc:
            value = exc
        except CelError as exc:
            value = CELEvalError(str(exc))
        variables[celtypes.StringType(name)] = value
    return variables


def evaluate(expression: str, activation: Mapping[str, Any]) -> Any:
    """The expression's value over ``activation`` (CEL values, see :func:`to_cel`), or
    :class:`CelError`."""
    try:
        return _program(expression).evaluate(dict(activation))
    except CELEvalError as exc:
        raise CelError(str(exc.args[0] if exc.args else exc)) from None


def evaluate_bool(expression: str, activation: Mapping[str, Any]) -> bool:
    result = evaluate(expression, activation)
    if not isinstance(result, celtypes.BoolType | bool):
        raise CelError(f"expected a bool, got {type(result).__name__}")
    return bool(result)


def evaluate_string(expression: str, activation: Mapping[str, Any]) -> str:
    result = evaluate(expression, activation)
    if not isinstance(result, str):  # cel-python's own string operations answer a plain str
        raise CelError(f"expected a string, got {type(result).__name__}")
    return str(result)
