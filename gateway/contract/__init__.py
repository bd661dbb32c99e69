"""The API contract: the OpenAPI document, and the page that shows it.

The canonical document is ``gateway/contract/openapi.yaml``, shipped as package data so that
an installed gateway can serve it; ``openapi/openapi.yaml`` at the repository root is a
symlink to it. ``load_spec()`` parses it, ``spec_json()`` is the same as JSON for
``/openapi.json``.

``/docs`` is Swagger UI served from the ``swagger-ui-bundle-v2`` package (Swagger UI 5, the
first to render OpenAPI 3.1): ``docs_html()`` is the page and ``docs_asset(name)`` each file
it loads, so the page works without internet access. Only the names in ``DOCS_ASSETS`` are
served: a name is a key of that table, never a path.

This package holds only the document and the docs assets: the checker the tests run on every
response lives in ``tests/support/contract.py`` (it needs the ``test`` extra).
"""

from __future__ import annotations

import copy
import functools
import html
import json
import re
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any, Final

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

__all__ = [
    "DOCS_ASSETS",
    "DOCS_CONTENT_SECURITY_POLICY",
    "docs_asset",
    "docs_html",
    "load_spec",
    "parse_yaml",
    "spec_json",
    "swagger_ui_version",
]

SPEC_FILE: Final = "openapi.yaml"

_SWAGGER_UI_PACKAGE: Final = "swagger_ui_bundle"

#: Our own script, served as ``docs.js``: it starts Swagger UI on the page of ``docs_html()``.
#: It lives in a file of its own (not inline) so that the page runs under ``script-src 'self'``.
_DOCS_JS: Final = b"""\
"use strict";
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    defaultModelsExpandDepth: 1,
    tryItOutEnabled: false
  });
});
"""

#: The files ``/docs/{asset}`` serves, and their content types.
DOCS_ASSETS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "swagger-ui.css": "text/css; charset=utf-8",
        "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
        "docs.js": "text/javascript; charset=utf-8",
        "favicon-16x16.png": "image/png",
        "favicon-32x32.png": "image/png",
    }
)

#: A Content-Security-Policy under which the docs page works: everything from the gateway
#: itself, inline styles (Swagger UI sets them) and ``data:`` images (its icons).
DOCS_CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader for JSON-shaped documents.

    Duplicate keys and non-string keys are errors (plain PyYAML keeps the last duplicate
    and turns ``200:`` into an int); timestamps stay strings (JSON has no dates); only
    ``true`` and ``false`` are booleans (not YAML 1.1's ``yes``, ``on``, ...).
    """


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_TIMESTAMP_TAG, _BOOL_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|false)$"), list("tf"))


def _construct_mapping(loader: _StrictLoader, node: MappingNode) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found a non-string key {key!r}: quote it",
                key_node.start_mark,
            )
        if key in mapping:
            raise ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found the duplicate key {key!r}",
                key_node.start_mark,
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


def _construct_merge_refused(loader: _StrictLoader, node: yaml.Node) -> None:
    raise ConstructorError(None, None, "merge keys (<<) are not allowed", node.start_mark)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:merge", _construct_merge_refused)


def parse_yaml(text: str) -> Any:
    """Parse a JSON-shaped YAML document strictly (see ``_StrictLoader``)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def _package_files() -> Traversable:
    return resources.files(__name__)


@functools.cache
def _spec() -> dict[str, Any]:
    spec = parse_yaml(_package_files().joinpath(SPEC_FILE).read_text(encoding="utf-8"))
    if not isinstance(spec, dict):
        raise TypeError(f"{SPEC_FILE}: the document is not a mapping")
    return spec


def load_spec() -> dict[str, Any]:
    """The OpenAPI document as a fresh dict (callers may change their copy)."""
    return copy.deepcopy(_spec())


@functools.cache
def spec_json() -> bytes:
    """The OpenAPI document as compact UTF-8 JSON, for ``/openapi.json``."""
    return json.dumps(_spec(), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
        "utf-8"
    )


def docs_html(*, spec_url: str = "/openapi.json", assets_url: str = "/docs/") -> str:
    """The ``/docs`` page: Swagger UI for ``spec_url``, its files loaded from ``assets_url``.

    ``assets_url`` is the URL prefix under which ``docs_asset()`` is served (ending in ``/``).
    The page has no inline script, and loads nothing from another origin.
    """
    if not assets_url.endswith("/"):
        raise ValueError("assets_url must end with '/'")
    spec = html.escape(spec_url, quote=True)
    assets = html.escape(assets_url, quote=True)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        "<head>\n"
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>pop3gw API</title>\n"
        f'<link rel="stylesheet" href="{assets}swagger-ui.css">\n'
        f'<link rel="icon" type="image/png" sizes="32x32" href="{assets}favicon-32x32.png">\n'
        f'<link rel="icon" type="image/png" sizes="16x16" href="{assets}favicon-16x16.png">\n'
        "</head>\n"
        "<body>\n"
        f'<div id="swagger-ui" data-spec-url="{spec}"></div>\n'
        f'<script src="{assets}swagger-ui-bundle.js" charset="utf-8"></script>\n'
        f'<script src="{assets}docs.js" charset="utf-8"></script>\n'
        "</body>\n"
        "</html>\n"
    )


def _version_key(dirname: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", dirname))


@functools.cache
def _swagger_ui_dir() -> Traversable:
    """The Swagger UI distribution inside the ``swagger_ui_bundle`` package."""
    vendor = resources.files(_SWAGGER_UI_PACKAGE).joinpath("vendor")
    dists = [d for d in vendor.iterdir() if d.is_dir() and d.name.startswith("swagger-ui-")]
    if not dists:
        raise FileNotFoundError(f"no Swagger UI distribution in {_SWAGGER_UI_PACKAGE}/vendor")
    return max(dists, key=lambda d: _version_key(d.name))


def swagger_ui_version() -> str:
    """The version of the Swagger UI that ``/docs`` serves, e.g. ``5.31.0``."""
    return _swagger_ui_dir().name.removeprefix("swagger-ui-")


@functools.cache
def _asset_bytes(name: str) -> bytes:
    if name == "docs.js":
        return _DOCS_JS
    return _swagger_ui_dir().joinpath(name).read_bytes()


def docs_asset(name: str) -> tuple[bytes, str] | None:
    """The content and content type of the docs file ``name``, or None if it is not one.

    ``name`` is looked up in ``DOCS_ASSETS``; anything else (another file, ``../x``, an
    absolute path) is None. A known file missing from the installation raises
    ``FileNotFoundError``: that is a broken install, not a client error.
    """
    content_type = DOCS_ASSETS.get(name)
    if content_type is None:
        return None
    return _asset_bytes(name), content_type
