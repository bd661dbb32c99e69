"""/docs: Swagger UI from package data, nothing from the network, nothing outside the list."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

import gateway.contract as contract
from gateway.contract import (
    DOCS_ASSETS,
    DOCS_CONTENT_SECURITY_POLICY,
    docs_asset,
    docs_html,
    swagger_ui_version,
)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a connection fails the test; asset caches start empty."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    contract._asset_bytes.cache_clear()
    contract._swagger_ui_dir.cache_clear()
    yield
    contract._asset_bytes.cache_clear()
    contract._swagger_ui_dir.cache_clear()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.spec_urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name):
                self.urls.append(str(values[name]))
        if "data-spec-url" in values:
            self.spec_urls.append(str(values["data-spec-url"]))
        if tag == "script":
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


def parse(html: str) -> _Links:
    links = _Links()
    links.feed(html)
    return links


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("name", sorted(DOCS_ASSETS))
def test_every_asset_is_served_without_network(name: str) -> None:
    served = docs_asset(name)
    assert served is not None
    content, content_type = served
    assert content
    assert content_type == DOCS_ASSETS[name]


def test_assets_have_the_right_content() -> None:
    for name in DOCS_ASSETS:
        content, content_type = docs_asset(name) or (b"", "")
        if content_type == "image/png":
            assert content.startswith(b"\x89PNG\r\n\x1a\n"), name
        else:
            content.decode("utf-8")  # text assets are UTF-8, as their charset says
    bundle, _ = docs_asset("swagger-ui-bundle.js") or (b"", "")
    assert b"SwaggerUIBundle" in bundle
    css, _ = docs_asset("swagger-ui.css") or (b"", "")
    assert b".swagger-ui" in css


def test_stylesheet_loads_nothing_from_elsewhere() -> None:
    css = (docs_asset("swagger-ui.css") or (b"", ""))[0].decode("utf-8")
    urls = re.findall(r"url\(\s*['\"]?([^'\")]*)", css)
    assert urls
    assert [u for u in urls if not u.startswith("data:")] == []
    assert "@import" not in css


def test_our_script_starts_swagger_ui_offline() -> None:
    script = (docs_asset("docs.js") or (b"", ""))[0].decode("utf-8")
    assert "validatorUrl: null" in script  # the online validator badge would call out
    assert "data-spec-url" in script
    assert "http" not in script


def test_swagger_ui_renders_openapi_3_1() -> None:
    """Swagger UI 4 says 'Unable to render this definition' for 3.1; 5 renders it."""
    major = int(swagger_ui_version().split(".")[0])
    assert major >= 5


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "../__init__.py",
        "..",
        ".",
        "",
        "/etc/passwd",
        "/swagger-ui.css",
        "./swagger-ui.css",
        "swagger-ui.css/",
        "swagger-ui.css/..",
        "vendor/../swagger-ui.css",
        "..%2Fswagger-ui.css",
        "..\\swagger-ui.css",
        "C:\\Windows\\win.ini",
        "SWAGGER-UI.CSS",
        "swagger-ui.css\x00",
        "index.html",
        "index.j2",
        "swagger-initializer.js",
        "swagger-ui-bundle.js.map",
        "oauth2-redirect.html",
        "openapi.yaml",
    ],
)
def test_only_known_assets_are_served(name: str) -> None:
    assert docs_asset(name) is None


def test_page_loads_only_the_served_assets() -> None:
    html = docs_html()
    links = parse(html)
    assert links.urls
    for url in links.urls:
        assert url.startswith("/docs/"), url
        assert url.removeprefix("/docs/") in DOCS_ASSETS, url
    assert links.spec_urls == ["/openapi.json"]
    assert links.inline_scripts == 0  # runs under script-src 'self'
    assert "http:" not in html
    assert "https:" not in html
    assert "//" not in html


def test_page_under_a_prefix() -> None:
    links = parse(docs_html(spec_url="/gw/openapi.json", assets_url="/gw/docs/"))
    assert {u.rsplit("/", 1)[0] for u in links.urls} == {"/gw/docs"}
    assert links.spec_urls == ["/gw/openapi.json"]


def test_page_escapes_its_urls() -> None:
    html = docs_html(spec_url='/x"><script>alert(1)</script>')
    assert "<script>alert" not in html
    assert parse(html).spec_urls == ['/x"><script>alert(1)</script>']


def test_assets_url_must_be_a_prefix() -> None:
    with pytest.raises(ValueError, match="must end with '/'"):
        docs_html(assets_url="/docs")


def test_content_security_policy_allows_only_the_gateway() -> None:
    directives = dict(
        d.strip().split(" ", 1) for d in DOCS_CONTENT_SECURITY_POLICY.split(";") if d.strip()
    )
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert "http" not in DOCS_CONTENT_SECURITY_POLICY
