"""Check HTTP responses against the OpenAPI document.

The API tests call ``ResponseValidator.validate`` (or ``validate_path``) on every response
they get; a response the document does not describe raises ``AssertionError`` saying what
differs: an undocumented status or content type, a missing required header, a header value
or a JSON body that does not match its schema. Schemas are checked with ``jsonschema``
(Draft 2020-12, ``format`` checked where a checker is installed, e.g. ``date-time``), with
``$ref`` resolved inside the document through a ``referencing`` registry.

Beyond the schemas (which tie each problem response to its ``status`` and ``type``s), a
problem's ``request_id`` must equal the ``X-Request-ID`` header, and its ``retry_after``
the ``Retry-After`` header, where both are present.

This module needs the ``test`` extra; the service itself never imports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = ["ResponseValidator"]

_BASE_URI: Final = "urn:pop3gw:openapi"
_HTTP_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_MAX_ERRORS: Final = 10
_MAX_MESSAGE: Final = 300
_NO_CONTENT: Final = frozenset({204, 304})
_PROBLEM_JSON: Final = "application/problem+json"


def _escape_pointer_token(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(*tokens: str) -> str:
    return "".join("/" + _escape_pointer_token(t) for t in tokens)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _likeliest(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf, the branch that got furthest into the instance: the likeliest cause."""
    while error.context:
        error = max(error.context, key=lambda e: (len(e.absolute_path), e.validator != "type"))
    return error


def _describe(errors: list[ValidationError]) -> list[str]:
    """One line per error, sorted by location.

    An ``unevaluatedProperties`` error is left out where another error lies at or under its
    location: a failing ``allOf`` branch leaves all its properties "unevaluated", which would
    only repeat the real error as noise.
    """
    locations = [tuple(e.absolute_path) for e in errors if e.validator != "unevaluatedProperties"]
    kept = [
        e
        for e in errors
        if e.validator != "unevaluatedProperties"
        or not any(loc[: len(e.absolute_path)] == tuple(e.absolute_path) for loc in locations)
    ]
    kept.sort(key=lambda e: [str(p) for p in e.absolute_path])
    return [
        f"at {cause.json_path}: {_shorten(cause.message)}"
        for cause in (_likeliest(e) for e in kept)
    ]


@dataclass(frozen=True)
class _Template:
    template: str
    regex: re.Pattern[str]
    params: int
    literal_chars: int


def _compile_template(template: str) -> _Template:
    parts = re.split(r"(\{[^{}/]+\})", template)
    pattern = "".join(
        "[^/]+" if part.startswith("{") and part.endswith("}") else re.escape(part)
        for part in parts
    )
    params = sum(1 for part in parts if part.startswith("{"))
    literal = sum(len(part) for part in parts if not part.startswith("{"))
    return _Template(template, re.compile(pattern), params, literal)


class ResponseValidator:
    """Validates responses against an OpenAPI 3.1 document (a parsed dict)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self._spec = spec
        self._registry: Registry[Any] = Registry().with_resource(
            _BASE_URI, DRAFT202012.create_resource(spec)
        )
        paths = spec.get("paths", {})
        self._paths: Mapping[str, Any] = paths if isinstance(paths, Mapping) else {}
        self._templates = [_compile_template(t) for t in self._paths]
        self._validators: dict[str, Draft202012Validator] = {}
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
        for t in self._templates:
            if t.regex.fullmatch(path) is None:
                continue
            item = self._paths[t.template]
            has_method = wanted is not None and isinstance(item, Mapping) and wanted in item
            rank = (not has_method, t.params, -t.literal_chars)
            if best is None or rank < best[0]:
                best = (rank, t.template)
        return None if best is None else best[1]

    # ---- validation --------------------------------------------------------------------

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
            if status != 404:
                raise AssertionError(f"{where}: no documented path matches, so 404 was expected")
            response, pointer = self._resolve(_pointer("components", "responses", "NotFound"))
            self._check_response(
                where, response, pointer, verb, status, content_type, body, headers
            )
            return
        self.validate(method, template, status, content_type, body, headers)

    def validate(
        self,
        method: str,
        path_template: str,
        status: int,
        content_type: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> None:
        """Raise ``AssertionError`` unless the document describes this response.

        ``content_type`` is the Content-Type header as sent (parameters allowed); it is
        not looked at for a response documented without content. ``body`` is the whole
        body; None means it was not read (allowed for non-JSON content only). ``HEAD``
        is checked as ``GET`` without a body; a method the path does not document must
        answer ``405`` (``components/responses/MethodNotAllowed``).
        """
        verb = method.upper()
        where = f"{verb} {path_template} -> {status}"
        item = self._paths.get(path_template)
        if not isinstance(item, Mapping):
            raise AssertionError(f"{where}: the path template is not documented")
        op_name = verb.lower()
        if op_name == "head" and "head" not in item:
            op_name = "get"
        if op_name not in item:
            if status != 405:
                raise AssertionError(
                    f"{where}: {verb} is not documented for this path, so 405 was expected"
                )
            response, pointer = self._resolve(
                _pointer("components", "responses", "MethodNotAllowed")
            )
        else:
            responses = item[op_name].get("responses", {})
            key = self._status_key(responses, status)
            if key is None:
                documented = ", ".join(sorted(str(k) for k in responses))
                raise AssertionError(
                    f"{where}: status {status} is not documented (documented: {documented})"
                )
            response, pointer = self._resolve(
                _pointer("paths", path_template, op_name, "responses", key)
            )
        self.seen.add((verb, path_template, status))
        self._check_response(where, response, pointer, verb, status, content_type, body, headers)

    # ---- internals ---------------------------------------------------------------------

    @staticmethod
    def _status_key(responses: Mapping[str, Any], status: int) -> str | None:
        for key in (str(status), f"{status // 100}XX", "default"):
            if key in responses:
                return key
        return None

    def _get(self, pointer: str) -> Any:
        node: Any = self._spec
        for raw in pointer.split("/")[1:]:
            token = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, list):
                node = node[int(token)]
            elif isinstance(node, Mapping) and token in node:
                node = node[token]
            else:
                raise AssertionError(f"the document has nothing at #{pointer}")
        return node

    def _resolve(self, pointer: str) -> tuple[Mapping[str, Any], str]:
        """The object at ``pointer``, following OpenAPI ``$ref``s; and where it really is."""
        for _ in range(32):
            node = self._get(pointer)
            if not isinstance(node, Mapping):
                raise AssertionError(f"#{pointer} is not an object")
            ref = node.get("$ref")
            if not isinstance(ref, str):
                return node, pointer
            if not ref.startswith("#/"):
                raise AssertionError(f"#{pointer}: only local $refs are supported, not {ref}")
            pointer = ref[1:]
        raise AssertionError(f"#{pointer}: $ref chain too long")

    def _validator(self, schema_pointer: str) -> Draft202012Validator:
        validator = self._validators.get(schema_pointer)
        if validator is None:
            ref = f"{_BASE_URI}#{quote(schema_pointer, safe='/~')}"
            validator = Draft202012Validator(
                {"$ref": ref},
                registry=self._registry,
                format_checker=Draft202012Validator.FORMAT_CHECKER,
            )
            self._validators[schema_pointer] = validator
        return validator

    def _schema_errors(self, schema_pointer: str, instance: Any) -> list[str]:
        return _describe(list(self._validator(schema_pointer).iter_errors(instance)))

    def _check_response(
        self,
        where: str,
        response: Mapping[str, Any],
        pointer: str,
        method: str,
        status: int,
        content_type: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> None:
        lowered = {k.lower(): v for k, v in headers.items()}
        self._check_headers(where, response, pointer, lowered)
        parsed = self._check_content(where, response, pointer, method, status, content_type, body)
        if isinstance(parsed, Mapping) and _media_type(content_type) == _PROBLEM_JSON:
            self._check_problem_echoes(where, parsed, lowered)

    def _check_headers(
        self,
        where: str,
        response: Mapping[str, Any],
        pointer: str,
        headers: Mapping[str, str],
    ) -> None:
        documented = response.get("headers", {})
        for name in documented:
            if name.lower() == "content-type":
                continue  # OpenAPI: described by the content map, not here
            header_ref = f"{pointer}/headers/{_escape_pointer_token(name)}"
            header, header_pointer = self._resolve(header_ref)
            value = headers.get(name.lower())
            if value is None:
                if header.get("required", False):
                    raise AssertionError(f"{where}: the required header {name} is missing")
                continue
            if "schema" not in header:
                continue
            schema_pointer = f"{header_pointer}/schema"
            instance = self._header_instance(where, name, value, schema_pointer)
            errors = self._schema_errors(schema_pointer, instance)
            if errors:
                raise AssertionError(
                    f"{where}: header {name}: {value!r} does not match its schema: "
                    + "; ".join(errors[:_MAX_ERRORS])
                )

    def _header_instance(self, where: str, name: str, value: str, schema_pointer: str) -> Any:
        schema, _ = self._resolve(schema_pointer)
        kind = schema.get("type")
        if kind == "integer":
            if re.fullmatch(r"-?[0-9]+", value.strip()) is None:
                raise AssertionError(f"{where}: header {name}: {value!r} is not an integer")
            return int(value)
        if kind == "number":
            try:
                return float(value)
            except ValueError:
                raise AssertionError(f"{where}: header {name}: {value!r} is not a number") from None
        if kind == "boolean":
            if value not in ("true", "false"):
                raise AssertionError(f"{where}: header {name}: {value!r} is not a boolean")
            return value == "true"
        return value

    def _check_content(
        self,
        where: str,
        response: Mapping[str, Any],
        pointer: str,
        method: str,
        status: int,
        content_type: str,
        body: bytes | None,
    ) -> Any:
        """Check the content type and body; return the parsed JSON body, if any."""
        content = response.get("content")
        if not content or status in _NO_CONTENT:
            if body:
                raise AssertionError(
                    f"{where}: the response is documented without content, "
                    f"but it has a {len(body)}-byte body"
                )
            return None
        media_type = _media_type(content_type)
        if not media_type:
            raise AssertionError(f"{where}: no Content-Type (documented: {', '.join(content)})")
        key = self._media_key(content, media_type)
        if key is None:
            raise AssertionError(
                f"{where}: content type {media_type!r} is not documented "
                f"(documented: {', '.join(content)})"
            )
        if method == "HEAD":
            if body:
                raise AssertionError(f"{where}: a HEAD response has a {len(body)}-byte body")
            return None
        media = content[key]
        if not _is_json(media_type) or not isinstance(media, Mapping) or "schema" not in media:
            return None
        if body is None:
            raise AssertionError(f"{where}: a {media_type} body was documented, but none given")
        try:
            instance = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except ValueError as exc:
            raise AssertionError(f"{where}: the body is not valid JSON: {exc}") from None
        schema_pointer = f"{pointer}/content/{_escape_pointer_token(key)}/schema"
        errors = self._schema_errors(schema_pointer, instance)
        if errors:
            more = f" (and {len(errors) - _MAX_ERRORS} more)" if len(errors) > _MAX_ERRORS else ""
            raise AssertionError(
                f"{where}: the {media_type} body does not match its schema: "
                + "; ".join(errors[:_MAX_ERRORS])
                + more
            )
        return instance

    @staticmethod
    def _media_key(content: Mapping[str, Any], media_type: str) -> str | None:
        by_lower = {k.lower(): k for k in content}
        major = media_type.split("/", 1)[0]
        for candidate in (media_type, f"{major}/*", "*/*"):
            if candidate in by_lower:
                return by_lower[candidate]
        return None

    @staticmethod
    def _check_problem_echoes(
        where: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> None:
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
