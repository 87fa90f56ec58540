"""The ``gateway-yeeter`` command: ``serve`` for the cluster, ``mutate`` to try the rule offline.

Every ``serve`` flag also reads ``GATEWAY_YEETER_<FLAG>`` from the environment, with dashes as
underscores, as Kubernetes components do for their own flags.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import jsonpatch
import orjson
import yaml

from gateway_yeeter import __version__
from gateway_yeeter.admission import Policy, decide
from gateway_yeeter.config import Limits, ServeSettings, parse_duration
from gateway_yeeter.logs import configure_logging
from gateway_yeeter.review import BadReview, decode_review, encode_review
from gateway_yeeter.targeting import PodKind, SelectorError, Targets, parse_selector

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
ENV_PREFIX = "GATEWAY_YEETER_"
DEFAULTS = ServeSettings()


class Duration(click.ParamType[float]):
    """A Go-style duration such as ``10s`` or ``500ms`` (a bare number is seconds), in seconds.

    Each flag has bounds: a zero header timeout or reload interval starts a server that drops
    every connection or spins on the files, and an hour-long shutdown delay outlives any
    grace period.
    """

    name = "duration"

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)
        if not self.minimum <= seconds <= self.maximum:
            self.fail(
                f"{value!r} is outside {_seconds(self.minimum)} to {_seconds(self.maximum)}",
                param, ctx,
            )
        return seconds


def _ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address") from None
    return value


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"


def _option(flag: str, *names: str, **kwargs: Any) -> Callable[[F], F]:
    envvar = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
    return click.option(flag, *names, envvar=envvar, show_envvar=True, show_default=True,
                        **kwargs)


def policy_options(command: F) -> F:
    """The flags of the admission rule, shared by ``serve`` and ``mutate``."""
    options = [
        _option("--virt-v2v-selector", default=None, metavar="SELECTOR",
                help="Label selector of virt-v2v conversion pods "
                     "[default: forklift.app=virt-v2v]."),
        _option("--inspection-selector", default=None, metavar="SELECTOR",
                help="Label selector of virt-v2v inspection pods "
                     "[default: forklift.app=virt-v2v-inspection]."),
        _option("--cdi-importer-selector", default=None, metavar="SELECTOR",
                help="Label selector of CDI importer pods [default: "
                     "app=containerized-data-importer,cdi.kubevirt.io=importer,plan]."),
        _option("--all-cdi-importers", is_flag=True, default=False,
                help="Edit every CDI importer pod, not only those with Forklift's plan label."),
        _option("--networks", "only_networks", default="", metavar="NS/NAME,...",
                help="Only remove default-route from these networks (comma-separated "
                     "namespace/name; an element without namespace means the pod's). "
                     "Empty means every network."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_policy(
    *,
    virt_v2v_selector: str | None,
    inspection_selector: str | None,
    cdi_importer_selector: str | None,
    all_cdi_importers: bool,
    only_networks: str,
) -> Policy:
    flags = (
        (PodKind.VIRT_V2V, virt_v2v_selector, "--virt-v2v-selector"),
        (PodKind.INSPECTION, inspection_selector, "--inspection-selector"),
        (PodKind.CDI_IMPORTER, cdi_importer_selector, "--cdi-importer-selector"),
    )
    for _, text, flag in flags:
        if text is not None and not text.strip():
            raise click.BadParameter("an empty selector would match every pod", param_hint=flag)
        if text:
            try:
                parse_selector(text)
            except SelectorError as error:
                raise click.BadParameter(str(error), param_hint=flag) from None
    overrides = {kind: text for kind, text, _ in flags if text}
    targets = Targets.from_text(overrides, every_cdi_importer=all_cdi_importers)

    networks = [name.strip() for name in only_networks.split(",") if name.strip()]
    if only_networks.strip() and not networks:
        raise click.BadParameter(f"{only_networks!r} names no network", param_hint="'--networks'")
    for network in networks:
        if network.count("/") != 1 or network.startswith("/") or network.endswith("/"):
            raise click.BadParameter(
                f"{network!r} is not namespace/name", param_hint="'--networks'"
            )
    return Policy(targets=targets, only_networks=frozenset(networks) if networks else None)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gateway-yeeter")
def main() -> None:
    """Remove default-route from Forklift migration pods' network selections."""


@main.command()
@_option("--bind-address", default=DEFAULTS.bind_address, callback=lambda _c, _p, value: _ip(value),
         help="IP address to listen on; :: for IPv6 (and IPv4 where the host allows).")
@_option("--secure-port", default=8443, type=click.IntRange(0, 65535),
         help="HTTPS port for /mutate, /healthz, /readyz and /metrics (0 picks a free port).")
@_option("--tls-cert-file", default=str(DEFAULTS.tls_cert_file), type=click.Path(path_type=Path),
         help="Serving certificate chain (PEM), reloaded when it changes.")
@_option("--tls-private-key-file", default=str(DEFAULTS.tls_private_key_file),
         type=click.Path(path_type=Path), help="Private key of the serving certificate (PEM).")
@_option("--self-signed", is_flag=True, default=False,
         help="Generate a certificate for localhost and the service names at start instead of "
              "reading the files; its CA is written where the log says. For local use.")
@_option("--self-signed-dir", default=None, type=click.Path(path_type=Path),
         help="Where --self-signed writes ca.crt, tls.crt and tls.key "
              "[default: a private folder under the temp dir].")
@_option("--cert-reload-interval", default="10s", type=Duration(0.1, 3600),
         help="How often to check the certificate files for new content.")
@_option("--shutdown-delay", default="5s", type=Duration(0, 300),
         help="After SIGTERM: time to keep serving, unready and closing connections, before "
              "the listener closes.")
@_option("--shutdown-timeout", default="15s", type=Duration(0, 300),
         help="After the listener closes: time for requests in flight to be answered.")
@_option("--header-timeout", default="10s", type=Duration(0.1, 300),
         help="Time a connection gets to send complete request headers.")
@_option("--request-timeout", default="10s", type=Duration(0.1, 300),
         help="Time to receive a request body (shortened by the URL's ?timeout=).")
@_option("--idle-timeout", default="120s", type=Duration(0.1, 3600),
         help="How long an idle keep-alive connection stays open; keep it above the API "
              "server's 90s.")
@_option("--max-connections", default=DEFAULTS.limits.max_connections, type=click.IntRange(1),
         help="Open connections beyond which requests are answered 503.")
@policy_options
@_option("--log-format", default="text", type=click.Choice(["text", "json"]),
         help="Log line format.")
@_option("--log-level", default="info",
         type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
         help="Lowest level logged.")
def serve(**flags: Any) -> None:
    """Serve the admission webhook over HTTPS until SIGTERM or SIGINT."""
    configure_logging(log_format=flags.pop("log_format"), level=flags.pop("log_level"))
    policy = build_policy(
        virt_v2v_selector=flags.pop("virt_v2v_selector"),
        inspection_selector=flags.pop("inspection_selector"),
        cdi_importer_selector=flags.pop("cdi_importer_selector"),
        all_cdi_importers=flags.pop("all_cdi_importers"),
        only_networks=flags.pop("only_networks"),
    )
    limits = Limits(
        header_timeout=flags.pop("header_timeout"),
        request_timeout=flags.pop("request_timeout"),
        idle_timeout=flags.pop("idle_timeout"),
        max_connections=flags.pop("max_connections"),
    )
    settings = ServeSettings(**flags, limits=limits, policy=policy)

    # Imported here so that `mutate` and `--help` do not pay for the server's start-up.
    from gateway_yeeter.runner import run_server  # noqa: PLC0415

    sys.exit(run_server(settings))


def _read_document(source: str) -> tuple[Any, bool]:
    """Read JSON or YAML from a file or stdin; tell whether it was YAML."""
    try:
        text = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as error:
        raise click.ClickException(f"cannot read {source}: {error.strerror}") from None
    try:
        return orjson.loads(text), False
    except orjson.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(text), True
    except yaml.YAMLError as error:
        raise click.ClickException(f"{source} is neither JSON nor YAML: {error}") from None


def _review_of(document: Any) -> dict[str, Any]:
    """An AdmissionReview as given, or one that creates the given Pod manifest."""
    if isinstance(document, dict) and document.get("kind") == "Pod":
        metadata = document.get("metadata") or {}
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "00000000-0000-0000-0000-000000000000",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": metadata.get("namespace", "default"),
                "operation": "CREATE",
                "object": document,
                "dryRun": True,
            },
        }
    if isinstance(document, dict):
        return document
    raise click.ClickException("input is neither an AdmissionReview nor a Pod")


@main.command()
@click.argument("source", metavar="FILE|-")
@click.option("--output", "-o", type=click.Choice(["review", "pod"]), default="review",
              show_default=True,
              help="Print the AdmissionReview answer, or the pod with the patch applied.")
@policy_options
def mutate(source: str, output: str, **rule: Any) -> None:
    """Apply the admission rule to an AdmissionReview or a Pod manifest (JSON or YAML)."""
    policy = build_policy(**rule)
    document, was_yaml = _read_document(source)
    review_document = _review_of(document)

    try:
        review = decode_review(orjson.dumps(review_document))
    except BadReview as error:
        raise click.ClickException(str(error)) from None

    decision = decide(review.request, policy)
    click.echo(f"{decision.outcome}: {decision.reason}", err=True)

    if output == "review":
        answer = orjson.loads(encode_review(review.api_version, decision.response(
            review.request["uid"])))
        click.echo(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
        return

    # The decoded request holds only the pod's metadata; the patch applies to the whole pod.
    pod = review_document["request"].get("object") or {}
    if decision.patch is not None:
        pod = jsonpatch.JsonPatch(orjson.loads(decision.patch)).apply(pod)
    if was_yaml:
        click.echo(yaml.safe_dump(pod, sort_keys=False, allow_unicode=True), nl=False)
    else:
        click.echo(orjson.dumps(pod, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":  # pragma: no cover
    main()
