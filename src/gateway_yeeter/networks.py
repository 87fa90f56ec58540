"""The edit this project exists for: removing ``default-route`` from a Multus network selection.

The ``k8s.v1.cni.cncf.io/networks`` annotation holds either the comma-separated shorthand
(``[ns/]name[@ifname]``, which cannot carry a default route) or a JSON list of network selection
elements. Every function here is pure: annotation text in, annotation text out.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
DEFAULT_ROUTE_KEY = "default-route"

# Multus reads the value as JSON as soon as it holds any of these characters.
_JSON_MARKERS = ("[", "{", '"')


class UnparsableNetworks(ValueError):
    """The annotation claims to be JSON but is not a list Multus could read.

    The message is short enough to be sent back to the API server as an admission warning.
    """


@dataclass(frozen=True, slots=True)
class RemovedRoute:
    """A default route taken off one network selection element."""

    network: str
    """The network as ``namespace/name``, with the pod's namespace filled in when omitted."""

    gateways: Any
    """The ``default-route`` value exactly as it was: normally a list of gateway IPs."""


@dataclass(frozen=True, slots=True)
class NetworksEdit:
    """The annotation after the edit, and what the edit took away."""

    annotation: str
    removed: tuple[RemovedRoute, ...]


def is_json_selection(annotation: str) -> bool:
    """Tell whether Multus parses this annotation value as JSON rather than shorthand."""
    return any(marker in annotation for marker in _JSON_MARKERS)


def network_identity(element: dict[str, Any], pod_namespace: str) -> str:
    """Name an element's network as ``namespace/name``; no namespace means the pod's own."""
    namespace = element.get("namespace") or pod_namespace
    return f"{namespace}/{element.get('name', '')}"


def _is_default_route_key(key: str) -> bool:
    # Multus decodes elements with Go's encoding/json, which matches object keys to struct
    # fields without regard to case, so "Default-Route" sets the gateway just the same.
    return len(key) == len(DEFAULT_ROUTE_KEY) and key.lower() == DEFAULT_ROUTE_KEY


def _reject_constant(constant: str) -> Any:
    raise UnparsableNetworks(f"{NETWORKS_ANNOTATION} holds {constant}, which is not JSON")


# Built once: json.loads and json.dumps with options build a new coder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool) or value is None:
        return "literal"
    return "number"


def parse_selection(annotation: str) -> list[Any]:
    """Parse a JSON network selection, refusing anything Multus would refuse to read as a list.

    Integers keep full precision, so re-encoding does not alter values the edit does not touch.
    """
    try:
        selection = _DECODER.decode(annotation)
    except json.JSONDecodeError as error:
        raise UnparsableNetworks(
            f"{NETWORKS_ANNOTATION} is not valid JSON ({error.msg.removesuffix(' at')}"
            f" at character {error.pos})"
        ) from None
    except RecursionError:
        raise UnparsableNetworks(f"{NETWORKS_ANNOTATION} is nested too deeply") from None
    except UnparsableNetworks:
        raise
    except ValueError:
        # Python refuses to convert integers of more than 4300 digits.
        raise UnparsableNetworks(f"{NETWORKS_ANNOTATION} holds a number too long to read") from None

    if not isinstance(selection, list):
        raise UnparsableNetworks(
            f"{NETWORKS_ANNOTATION} is a JSON {_json_kind(selection)}, not a list"
        )

    return selection


def encode_json(value: Any) -> str:
    """Write a parsed value as compact JSON, leaving non-ASCII text as characters, not escapes.

    Used for the edited selection and for the record of what was removed, which both hold
    values exactly as the annotation had them.
    """
    try:
        encoded = _ENCODER.encode(value)
        encoded.encode("utf-8")
    except (ValueError, RecursionError):
        # A float that overflowed to infinity, or a lone surrogate escape: writing either back
        # would turn a readable annotation into one Multus rejects.
        raise UnparsableNetworks(
            f"{NETWORKS_ANNOTATION} holds a value that cannot be written back unchanged"
        ) from None
    return encoded


def remove_default_routes(
    annotation: str,
    *,
    pod_namespace: str,
    only_networks: Collection[str] | None = None,
) -> NetworksEdit | None:
    """Delete ``default-route`` from each element of a network selection.

    Every other key keeps its value and its place. ``only_networks``, when given, limits the
    edit to elements whose ``namespace/name`` it contains. Returns ``None`` when nothing changes:
    shorthand, no element with a default route, or none of the named networks. Raises
    :class:`UnparsableNetworks` for JSON that is broken or not a list.
    """
    if not is_json_selection(annotation):
        return None

    selection = parse_selection(annotation)

    removed: list[RemovedRoute] = []
    for element in selection:
        # Elements that are not objects make Multus fail the pod whatever we do; leave them.
        if not isinstance(element, dict):
            continue
        route_keys = [key for key in element if _is_default_route_key(key)]
        if not route_keys:
            continue
        network = network_identity(element, pod_namespace)
        if only_networks is not None and network not in only_networks:
            continue
        for key in route_keys:
            removed.append(RemovedRoute(network=network, gateways=element.pop(key)))

    if not removed:
        return None

    return NetworksEdit(annotation=encode_json(selection), removed=tuple(removed))
