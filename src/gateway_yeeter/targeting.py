"""Which pods the webhook edits: the one place that says "which pods, which networks".

Forklift's virt-v2v conversion and inspection pods, and CDI importer pods that carry Forklift's
``plan`` label, are matched by Kubernetes label selectors. The same selectors are written into
the MutatingWebhookConfiguration's ``objectSelector``; the webhook still checks them itself,
because a hand-edited configuration may send it more than it should touch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]

# A label key: an optional DNS-subdomain prefix and a name of at most 63 characters.
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = rf"(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"
_REQUIREMENT = re.compile(
    rf"""\s*(?:
        (?P<absent>!)\s*(?P<absent_key>{_KEY})
      | (?P<set_key>{_KEY})\s+(?P<set_op>in|notin)\s*\((?P<values>[^)]*)\)
      | (?P<eq_key>{_KEY})\s*(?P<eq_op>==|!=|=)\s*(?P<eq_value>{_VALUE})
      | (?P<exists_key>{_KEY})
    )\s*(?:,|$)""",
    re.VERBOSE,
)
_VALUE_ONLY = re.compile(rf"^{_VALUE}$")


class SelectorError(ValueError):
    """A label selector that does not follow the Kubernetes selector syntax."""


@dataclass(frozen=True, slots=True)
class Requirement:
    """One clause of a label selector, in the terms of ``matchExpressions``."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A conjunction of requirements, as ``kubectl get -l`` and ``objectSelector`` use them."""

    requirements: tuple[Requirement, ...]
    text: str = field(default="", compare=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def to_kubernetes(self) -> dict[str, Any]:
        """Render as a ``metav1.LabelSelector``: single-value ``In`` clauses as matchLabels."""
        match_labels: dict[str, str] = {}
        match_expressions: list[dict[str, Any]] = []
        for requirement in self.requirements:
            if requirement.operator == "In" and len(requirement.values) == 1:
                match_labels[requirement.key] = requirement.values[0]
                continue
            expression: dict[str, Any] = {"key": requirement.key, "operator": requirement.operator}
            if requirement.values:
                expression["values"] = list(requirement.values)
            match_expressions.append(expression)

        selector: dict[str, Any] = {}
        if match_labels:
            selector["matchLabels"] = match_labels
        if match_expressions:
            selector["matchExpressions"] = match_expressions
        return selector

    def __str__(self) -> str:
        return self.text


def parse_selector(text: str) -> LabelSelector:
    """Parse ``key=value``, ``key!=value``, ``key``, ``!key``, ``key in (a,b)`` and ``notin``."""
    requirements: list[Requirement] = []
    position = 0
    while position < len(text):
        match = _REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise SelectorError(f"label selector {text!r} is not valid near {text[position:]!r}")
        requirements.append(_requirement_from(match))
        position = match.end()

    if not requirements:
        raise SelectorError("label selector is empty; it would match every pod")

    return LabelSelector(requirements=tuple(requirements), text=text.strip())


def _requirement_from(match: re.Match[str]) -> Requirement:
    if match["absent"]:
        return Requirement(match["absent_key"], "DoesNotExist")

    if match["set_key"]:
        values = tuple(value.strip() for value in match["values"].split(",") if value.strip())
        for value in values:
            if not _VALUE_ONLY.match(value):
                raise SelectorError(f"{value!r} is not a valid label value")
        if not values:
            raise SelectorError(f"{match['set_key']} {match['set_op']} () needs values")
        operator: Operator = "In" if match["set_op"] == "in" else "NotIn"
        return Requirement(match["set_key"], operator, values)

    if match["eq_key"]:
        operator = "NotIn" if match["eq_op"] == "!=" else "In"
        return Requirement(match["eq_key"], operator, (match["eq_value"],))

    return Requirement(match["exists_key"], "Exists")


class PodKind(StrEnum):
    """The migration pods that carry Forklift's transfer-network annotation."""

    VIRT_V2V = "virt-v2v"
    INSPECTION = "virt-v2v-inspection"
    CDI_IMPORTER = "cdi-importer"


DEFAULT_SELECTORS: Mapping[PodKind, str] = {
    PodKind.VIRT_V2V: "forklift.app=virt-v2v",
    PodKind.INSPECTION: "forklift.app=virt-v2v-inspection",
    # CDI starts importers for imports that have nothing to do with Forklift, and those may
    # need their default route; only Forklift's own carry its plan label.
    PodKind.CDI_IMPORTER: "app=containerized-data-importer,cdi.kubevirt.io=importer,plan",
}

EVERY_CDI_IMPORTER_SELECTOR = "app=containerized-data-importer,cdi.kubevirt.io=importer"


@dataclass(frozen=True, slots=True)
class Targets:
    """The label selector for each pod kind; a pod is a target when one of them matches."""

    selectors: Mapping[PodKind, LabelSelector]

    @classmethod
    def from_text(
        cls, overrides: Mapping[PodKind, str] | None = None, *, every_cdi_importer: bool = False
    ) -> Targets:
        texts = dict(DEFAULT_SELECTORS)
        if every_cdi_importer:
            texts[PodKind.CDI_IMPORTER] = EVERY_CDI_IMPORTER_SELECTOR
        texts.update(overrides or {})
        return cls(selectors={kind: parse_selector(text) for kind, text in texts.items()})

    def classify(self, labels: Mapping[str, str]) -> PodKind | None:
        """Name the kind of migration pod these labels belong to, or ``None`` for other pods."""
        for kind, selector in self.selectors.items():
            if selector.matches(labels):
                return kind
        return None


DEFAULT_TARGETS = Targets.from_text()
