"""Check HTTP responses against the OpenAPI document (tests only).

The API tests call ``ResponseValidator.check`` (an aiohttp client response) or ``validate`` /
``validate_path`` (the parts of a response) on every response they get; a response the
document does not describe raises ``AssertionError`` saying what differs.

The generic checks are schemathesis's response-conformance checks, run on the operation the
response belongs to: an undocumented status, an undocumented or missing content type, a
missing required header or a header value that does not match its schema, a body that does
not match its schema (JSON Schema 2020-12 with ``$ref`` and ``format``, e.g. ``date-time``).

What is ours, because no generic validator says it:

- a concrete path no template matches must be answered ``404``, and a method a path does not
  document ``405``, each as ``components/responses/NotFound`` / ``MethodNotAllowed`` say
  (checked as two synthetic operations added to our copy of the document);
- ``HEAD`` is checked as ``GET`` without a body; a response documented without content
  (or a ``204`` / ``304``) has no body;
- a problem's ``request_id`` equals the ``X-Request-ID`` header, and its ``retry_after``
  the ``Retry-After`` header, where both are present.

Our copy of the document also drops response headers named Content-Type (OpenAPI says to
ignore them; schemathesis would check them). Known leniency of schemathesis, kept: a boolean
header accepts the usual spellings (``yes``, ``1``, ``on``, ...), not only ``true``/``false``.
A document whose references do not resolve is refused with schemathesis's own errors
(``RefResolutionError``, ``InvalidSchema``), not ``AssertionError``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import requests
import schemathesis
from aiohttp import ClientResponse
from schemathesis.core.failures import Failure
from schemathesis.errors import FailureGroup
from schemathesis.openapi.checks import JsonSchemaError
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

__all__ = ["ResponseValidator"]

_HTTP_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_CHECKS: Final = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
_MAX_ERRORS: Final = 10
_NO_CONTENT: Final = frozenset({204, 304})
_PROBLEM_JSON: Final = "application/problem+json"
#: Synthetic path items (in our copy of the document only) for the answers to a request the
#: document does not describe: every method answers 404 / 405 as the named component says.
_FALLBACKS: Final = {
    "/.pop3gw/undocumented-path": ("404", "NotFound"),
    "/.pop3gw/undocumented-method": ("405", "MethodNotAllowed"),
}
_UNDOCUMENTED_PATH, _UNDOCUMENTED_METHOD = _FALLBACKS


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _json_path(instance_path: list[str | int]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in instance_path)


def _without_noise(failures: list[Failure]) -> list[Failure]:
    """Leave out an ``unevaluatedProperties`` failure where another schema failure lies at
    or under its location: a failing ``allOf`` branch leaves all its properties
    "unevaluated", which would only repeat the real error as noise."""
    schema_errors = [f for f in failures if isinstance(f, JsonSchemaError)]

    def is_noise(failure: Failure) -> bool:
        if not isinstance(failure, JsonSchemaError):
            return False
        if not failure.validation_message.startswith("Unevaluated properties"):
            return False
        where = list(failure.instance_path)
        return any(
            other is not failure and list(other.instance_path)[: len(where)] == where
            for other in schema_errors
        )

    return [f for f in failures if not is_noise(f)]


def _describe(failure: Failure) -> str:
    """One line per failure: its title, then what schemathesis says (the location for a schema)."""
    if isinstance(failure, JsonSchemaError):
        return (
            f"{failure.title}: at {_json_path(failure.instance_path)}: {failure.validation_message}"
        )
    return f"{failure.title}: " + " ".join(failure.message.split())


def _drop_content_type_headers(responses: Any) -> None:
    """OpenAPI: a response header named Content-Type "SHALL be ignored" (the content map
    describes it); schemathesis checks it like any other header, so our copy drops it."""
    if not isinstance(responses, Mapping):
        return
    for response in responses.values():
        headers = response.get("headers") if isinstance(response, Mapping) else None
        if isinstance(headers, dict):
            for name in [n for n in headers if n.lower() == "content-type"]:
                del headers[name]


def _with_fallbacks(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Our copy of the document: Content-Type headers dropped, fallback operations added."""
    document = copy.deepcopy(dict(spec))
    paths = document.get("paths")
    document["paths"] = dict(paths) if isinstance(paths, Mapping) else {}
    for item in document["paths"].values():
        for method in _HTTP_METHODS:
            operation = item.get(method) if isinstance(item, Mapping) else None
            if isinstance(operation, Mapping):
                _drop_content_type_headers(operation.get("responses"))
    responses = document.get("components", {}).get("responses", {})
    _drop_content_type_headers(responses)
    for path, (status, component) in _FALLBACKS.items():
        if component in responses:
            ref = {"$ref": f"#/components/responses/{component}"}
            document["paths"][path] = {m: {"responses": {status: ref}} for m in _HTTP_METHODS}
    return document


@dataclass(frozen=True)
class _Template:
    template: str
    regex: re.Pattern[str]
    params: tuple[str, ...]
    literal_chars: int


def _compile_template(template: str) -> _Template:
    parts = re.split(r"(\{[^{}/]+\})", template)
    params = tuple(part[1:-1] for part in parts if part.startswith("{") and part.endswith("}"))
    pattern = "".join(
        "([^/]+)" if part.startswith("{") and part.endswith("}") else re.escape(part)
        for part in parts
    )
    literal = sum(len(part) for part in parts if not part.startswith("{"))
    return _Template(template, re.compile(pattern), params, literal)


class ResponseValidator:
    """Validates responses against an OpenAPI 3.1 document (a parsed dict)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        paths = spec.get("paths", {})
        self._paths: Mapping[str, Any] = paths if isinstance(paths, Mapping) else {}
        self._templates = {t: _compile_template(t) for t in self._paths}
        self._document = _with_fallbacks(spec)
        self._schema = schemathesis.openapi.from_dict(self._document, config=schemathesis.Config())
        #: Every (METHOD, path template, status) validated so far, for coverage checks.
        self.seen: set[tuple[str, str, int]] = set()

    # ---- paths -------------------------------------------------------------------------

    def operations(self) -> list[tuple[str, str]]:
        """Every documented (METHOD, path template)."""
        return [
            (method.upper(), template)
            for template, item in self._paths.items()
            for method in _HTTP_METHODS
            if isinstance(item, Mapping) and method in item
        ]

    def match_path(self, path: str, method: str | None = None) -> str | None:
        """The path template a concrete path belongs to, or None.

        A parameter matches any one non-empty segment (its pattern is the server's to
        enforce, with a documented error). Where several templates match, the one that
        documents ``method`` wins (when given), then the one with fewer parameters: a
        concrete path before a templated one, as OpenAPI says.
        """
        path = path.split("?", 1)[0]
        wanted = method.lower() if method else None
        best: tuple[tuple[bool, int, int], str] | None = None
        for t in self._templates.values():
            if t.regex.fullmatch(path) is None:
                continue
            item = self._paths[t.template]
            has_method = wanted is not None and isinstance(item, Mapping) and wanted in item
            rank = (not has_method, len(t.params), -t.literal_chars)
            if best is None or rank < best[0]:
                best = (rank, t.template)
        return None if best is None else best[1]

    # ---- validation --------------------------------------------------------------------

    async def check(self, resp: ClientResponse) -> bytes:
        """Validate an aiohttp client response (reading its body); return the body."""
        body = await resp.read()
        self.validate_path(
            resp.method,
            resp.url.path,
            resp.status,
            resp.headers.get("Content-Type", ""),
            body,
            resp.headers,
        )
        return body

    def validate_path(
        self,
        method: str,
        path: str,
        status: int,
        content_type: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> None:
        """Like ``validate``, for a concrete path: a path no template matches must be 404."""
        template = self.match_path(path, method)
        if template is None:
            verb = method.upper()
            where = f"{verb} {path} -> {status}"
            if status != 404 or _UNDOCUMENTED_PATH not in self._document["paths"]:
                raise AssertionError(f"{where}: no documented path matches, so 404 was expected")
            self._check(where, _UNDOCUMENTED_PATH, verb, path, status, content_type, body, headers)
            return
        self.validate(method, template, status, content_type, body, headers, path=path)

    def validate(
        self,
        method: str,
        path_template: str,
        status: int,
        content_type: str,
        body: bytes | None,
        headers: Mapping[str, str],
        *,
        path: str | None = None,
    ) -> None:
        """Raise ``AssertionError`` unless the document describes this response.

        ``content_type`` is the Content-Type header as sent (parameters allowed); it is
        not looked at for a response documented without content. ``body`` is the whole
        body; None means it was not read (allowed for non-JSON content only). ``HEAD``
        is checked as ``GET`` without a body; a method the path does not document must
        answer ``405`` (``components/responses/MethodNotAllowed``). ``path``, the
        concrete path, only fills in the path parameters of the failure report.
        """
        verb = method.upper()
        where = f"{verb} {path_template} -> {status}"
        item = self._paths.get(path_template)
        if not isinstance(item, Mapping):
            raise AssertionError(f"{where}: the path template is not documented")
        documented = verb.lower() in item or (verb == "HEAD" and "get" in item)
        if documented:
            operation_path = path_template
        elif status != 405 or _UNDOCUMENTED_METHOD not in self._document["paths"]:
            raise AssertionError(
                f"{where}: {verb} is not documented for this path, so 405 was expected"
            )
        else:
            operation_path = _UNDOCUMENTED_METHOD
        self.seen.add((verb, path_template, status))
        concrete = path or path_template
        self._check(where, operation_path, verb, concrete, status, content_type, body, headers)

    # ---- internals ---------------------------------------------------------------------

    def _path_parameters(self, operation_path: str, path: str) -> dict[str, str]:
        template = self._templates.get(operation_path)
        if template is None:
            return {}
        found = template.regex.fullmatch(path)
        values = found.groups() if found else template.params
        return dict(zip(template.params, values, strict=True))

    def _check(
        self,
        where: str,
        operation_path: str,
        verb: str,
        path: str,
        status: int,
        content_type: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> None:
        item = self._document["paths"][operation_path]
        method = "get" if verb == "HEAD" and "head" not in item else verb.lower()
        operation = self._schema[operation_path][method]
        lowered = {k.lower(): v for k, v in headers.items() if k.lower() != "content-type"}
        if content_type:
            lowered["content-type"] = content_type
        request = requests.Request(verb, f"http://127.0.0.1{path}").prepare()
        response = schemathesis.Response(
            status_code=status,
            headers={k: [v] for k, v in lowered.items()},
            content=body or b"",
            request=request,
            elapsed=0.0,
            verify=True,
        )
        case = operation.Case(path_parameters=self._path_parameters(operation_path, path))
        documented_types = self._schema.get_content_types(operation, response)
        checks = _CHECKS
        if verb == "HEAD" or status in _NO_CONTENT or not documented_types:
            checks = _CHECKS[:-1]  # nothing to validate; any body is refused below
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            failures = [_describe(f) for f in _without_noise(list(group.exceptions))]
            more = len(failures) - _MAX_ERRORS
            raise AssertionError(
                f"{where}: "
                + "; ".join(failures[:_MAX_ERRORS])
                + (f" (and {more} more)" if more > 0 else "")
            ) from None
        if body and (status in _NO_CONTENT or not documented_types):
            raise AssertionError(
                f"{where}: the response is documented without content, "
                f"but it has a {len(body)}-byte body"
            )
        if body and verb == "HEAD":
            raise AssertionError(f"{where}: a HEAD response has a {len(body)}-byte body")
        if body and _media_type(content_type) == _PROBLEM_JSON:
            problem = json.loads(body)  # schemathesis parsed it already
            if isinstance(problem, Mapping):
                _check_problem_echoes(where, problem, lowered)


def _check_problem_echoes(where: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
    request_id = headers.get("x-request-id")
    if "request_id" in body and request_id is not None and body["request_id"] != request_id:
        raise AssertionError(
            f"{where}: the body's request_id {body['request_id']!r} differs from "
            f"X-Request-ID {request_id!r}"
        )
    retry_after = headers.get("retry-after")
    if (
        "retry_after" in body
        and retry_after is not None
        and str(body["retry_after"]) != retry_after.strip()
    ):
        raise AssertionError(
            f"{where}: the body's retry_after {body['retry_after']!r} differs from "
            f"Retry-After {retry_after!r}"
        )
