"""The webhooks' matchConditions as cel-python programs, for tests to evaluate on pods."""

from __future__ import annotations

from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

from tests.deploy.manifests import Rendered

_UPPER_TO_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def _lower_ascii(text: celtypes.StringType) -> celtypes.StringType:
    # cel-python 0.5 lacks the extended strings library, which kube-apiserver's CEL has in
    # every release; this is its lowerAscii: ASCII letters lowered, everything else kept.
    return celtypes.StringType(str(text).translate(_UPPER_TO_LOWER))


def condition_expression(rendered: Rendered) -> str:
    """The one matchCondition expression that every webhook of the variant shares."""
    expressions = {
        condition["expression"]
        for hook in rendered.configuration["webhooks"]
        for condition in hook["matchConditions"]
    }
    (expression,) = expressions
    return str(expression)


class Condition:
    """A compiled matchCondition, called with a pod as the API server's `object`."""

    def __init__(self, expression: str) -> None:
        environment = celpy.Environment()
        self.program = environment.program(
            environment.compile(expression), functions={"lowerAscii": _lower_ascii}
        )

    def __call__(self, pod: dict[str, Any]) -> bool:
        result = self.program.evaluate({"object": json_to_cel(pod)})
        assert isinstance(result, celtypes.BoolType), result
        return bool(result)
