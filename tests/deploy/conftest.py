"""Fixtures for the deployment tests: kustomize, and each variant rendered once per session."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.deploy.manifests import (
    ENTRY_POINTS,
    REPO_ROOT,
    KustomizeNotFound,
    Manifest,
    Rendered,
    Variant,
    every_variant,
    kustomize_command,
    render,
    write_overlay,
)

RenderVariant = Callable[[Variant], Rendered]
RenderPath = Callable[[str], list[Manifest]]


@pytest.fixture(scope="session")
def kustomize() -> list[str]:
    try:
        return kustomize_command()
    except KustomizeNotFound as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def render_path(kustomize: list[str]) -> RenderPath:
    """Render a kustomization of the repository, given relative to its root."""
    cache: dict[str, list[Manifest]] = {}

    def rendered(path: str) -> list[Manifest]:
        if path not in cache:
            cache[path] = render(kustomize, REPO_ROOT / path)
        return cache[path]

    return rendered


@pytest.fixture(scope="session")
def render_variant(
    kustomize: list[str], tmp_path_factory: pytest.TempPathFactory
) -> RenderVariant:
    """Render base plus components through an overlay like the one an admin would write."""
    cache: dict[Variant, Rendered] = {}

    def rendered(variant: Variant) -> Rendered:
        if variant not in cache:
            overlay = write_overlay(tmp_path_factory.mktemp("overlay"), variant.components)
            cache[variant] = Rendered(variant, render(kustomize, overlay))
        return cache[variant]

    return rendered


@pytest.fixture(params=every_variant(), ids=lambda variant: variant.name)
def rendered(request: pytest.FixtureRequest, render_variant: RenderVariant) -> Rendered:
    """Each sensible combination of components, one test run per combination."""
    return render_variant(request.param)


@pytest.fixture(scope="session")
def openshift(render_path: RenderPath) -> Rendered:
    """What `oc apply -k deploy/` creates."""
    return Rendered(ENTRY_POINTS["deploy"], render_path("deploy"))
