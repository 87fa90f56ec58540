"""gateway-yeeter: a mutating admission webhook for Forklift migration pods."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gateway-yeeter")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"
