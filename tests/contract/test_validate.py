"""ResponseValidator: accepts what the document describes, and says clearly what it does not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from schemathesis.core.errors import InvalidSchema, RefResolutionError

from gateway.contract import load_spec
from tests.support.contract import ResponseValidator

MAILBOX = "/v1/mailboxes/{mailbox}"
MESSAGES = "/v1/mailboxes/{mailbox}/messages"
MESSAGE = "/v1/mailboxes/{mailbox}/messages/{id}"
RAW = "/v1/mailboxes/{mailbox}/messages/{id}/raw"
ATTACHMENT = "/v1/mailboxes/{mailbox}/messages/{id}/attachments/{attachment}"
DELETE_MANY = "/v1/mailboxes/{mailbox}/messages/delete"
CHECK = "/v1/mailboxes/{mailbox}/check"

JSON = "application/json; charset=utf-8"
PROBLEM = "application/problem+json"
RID = {"X-Request-ID": "req-1"}
#: what a message's answers (parsed, raw, a part) say about caching
IMMUTABLE_M1 = {"ETag": '"m1"', "Cache-Control": "private, max-age=31536000, immutable"}
ID = "MTcxNDU2NDgwMC5NMVA0MjQyLm14LmV4YW1wbGUub3Jn"


@pytest.fixture(scope="module")
def validator() -> ResponseValidator:
    return ResponseValidator(load_spec())


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def summary(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": ID,
        "uid": "1714564800.M1P4242.mx.example.org",
        "size": 48213,
        "subject": "Quarterly report",
        "from": {"name": "Alice Example", "address": "alice@example.com"},
        "to": [{"name": None, "address": "bob@example.org"}],
        "cc": [],
        "reply_to": [],
        "date": "2024-05-01T12:00:00+02:00",
        "message_id": "<20240501100000.4242@example.com>",
        "in_reply_to": None,
        "content_type": "multipart/mixed",
    }
    return {**base, **changes}


def message(**changes: Any) -> dict[str, Any]:
    full = summary(
        references=["<a@example.com>"],
        headers=[{"name": "Subject", "value": "Quarterly report"}],
        text="Hello",
        html=None,
        attachments=[
            {
                "id": "2",
                "filename": "report.pdf",
                "content_type": "application/pdf",
                "size": 31337,
                "disposition": "attachment",
                "content_id": None,
            }
        ],
        defects=[],
    )
    return {**full, **changes}


def page(**changes: Any) -> dict[str, Any]:
    base = {
        "messages": [summary()],
        "total": 1,
        "next_cursor": None,
        "snapshot_at": "2024-05-01T10:00:03Z",
    }
    return {**base, **changes}


def stats(**changes: Any) -> dict[str, Any]:
    base = {
        "mailbox": "me",
        "messages": 1,
        "octets": 48213,
        "snapshot_at": "2024-05-01T10:00:03.123456+00:00",
        "capabilities": ["TOP", "UIDL"],
    }
    return {**base, **changes}


def problem(slug: str, status: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"/problems/{slug}",
        "title": slug,
        "status": status,
        "detail": "what happened",
        "request_id": "req-1",
        **extra,
    }


# ---- accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "template", "status", "content_type", "body", "headers"),
    [
        ("GET", MAILBOX, 200, JSON, dumps(stats()), RID),
        ("GET", MESSAGES, 200, JSON, dumps(page()), {**RID, "ETag": 'W/"p1"'}),
        (
            "GET",
            MESSAGES,
            200,
            JSON,
            dumps(page(messages=[], total=0, next_cursor="opaque")),
            {**RID, "ETag": '"p1"'},
        ),
        ("GET", MESSAGES, 304, "", None, {**RID, "ETag": '"p1"'}),
        (
            "GET",
            MESSAGE,
            200,
            JSON,
            dumps(message()),
            {**RID, "ETag": '"m1"', "Cache-Control": "private, max-age=31536000, immutable"},
        ),
        (
            "GET",
            MESSAGE,
            304,
            "application/octet-stream",  # what aiohttp's client reports for no Content-Type
            b"",
            {**RID, "ETag": '"m1"', "Cache-Control": "private, max-age=31536000, immutable"},
        ),
        ("DELETE", MESSAGE, 204, "", None, RID),
        (
            "GET",
            RAW,
            200,
            "message/rfc822",
            b"Subject: x\r\n\r\nbody\r\n",
            {**RID, **IMMUTABLE_M1, "X-Content-Type-Options": "nosniff"},
        ),
        (
            "GET",
            RAW,
            200,
            "message/rfc822",
            None,
            {**RID, **IMMUTABLE_M1, "Content-Length": "20", "X-Content-Type-Options": "nosniff"},
        ),
        (
            "GET",
            ATTACHMENT,
            200,
            "application/pdf",
            b"%PDF-1.7",
            {
                **RID,
                **IMMUTABLE_M1,
                "Content-Disposition": "attachment; filename*=UTF-8''report%202024.pdf",
                "X-Content-Type-Options": "nosniff",
            },
        ),
        (
            "GET",
            ATTACHMENT,
            200,
            "text/html; charset=utf-8",
            b"<p>",
            {
                **RID,
                **IMMUTABLE_M1,
                "Content-Disposition": "attachment",
                "X-Content-Type-Options": "nosniff",
            },
        ),
        (
            "POST",
            DELETE_MANY,
            200,
            JSON,
            dumps({"deleted": [ID], "not_found": ["ab"]}),
            RID,
        ),
        (
            "POST",
            CHECK,
            200,
            JSON,
            dumps(
                {
                    "ok": False,
                    "steps": [
                        {"name": "connect", "ok": True, "ms": 3, "detail": None},
                        {"name": "tls", "ok": False, "ms": 12.5, "detail": "certificate expired"},
                    ],
                    "capabilities": [],
                    "messages": None,
                    "octets": None,
                }
            ),
            RID,
        ),
        ("GET", "/healthz", 200, JSON, dumps({"status": "ok"}), RID),
        (
            "GET",
            "/readyz",
            200,
            JSON,
            dumps({"status": "ready", "checks": {"upstreams": {"ok": True, "detail": None}}}),
            RID,
        ),
        (
            "GET",
            "/readyz",
            503,
            JSON,
            dumps(
                {"status": "not-ready", "checks": {"shutdown": {"ok": False, "detail": "draining"}}}
            ),
            RID,
        ),
        ("GET", "/metrics", 200, "text/plain; version=0.0.4; charset=utf-8", b"# HELP x\n", RID),
        ("GET", "/openapi.json", 200, JSON, json.dumps(load_spec()).encode(), RID),
        ("GET", "/docs", 200, "text/html; charset=utf-8", b"<!DOCTYPE html>", RID),
        ("GET", "/docs/{asset}", 200, "text/javascript; charset=utf-8", b"1", RID),
        ("GET", "/docs/{asset}", 404, PROBLEM, dumps(problem("not-found", 404)), RID),
        (
            "GET",
            MAILBOX,
            401,
            PROBLEM,
            dumps(problem("unauthorized", 401)),
            {**RID, "WWW-Authenticate": 'Basic realm="pop3gw", charset="UTF-8"'},
        ),
        ("GET", MAILBOX, 403, PROBLEM, dumps(problem("forbidden", 403)), RID),
        ("GET", MAILBOX, 404, PROBLEM, dumps(problem("not-found", 404, instance="/v1/x")), RID),
        ("GET", MAILBOX, 400, PROBLEM, dumps(problem("invalid-request", 400)), RID),
        (
            "GET",
            MESSAGE,
            422,
            PROBLEM,
            dumps(problem("message-too-large", 422, raw_url=f"/v1/mailboxes/me/messages/{ID}/raw")),
            RID,
        ),
        ("GET", MESSAGE, 422, PROBLEM, dumps(problem("no-mail-server", 422)), RID),
        ("GET", MAILBOX, 422, PROBLEM, dumps(problem("no-mail-server", 422)), RID),
        (
            "GET",
            MAILBOX,
            423,
            PROBLEM,
            dumps(problem("mailbox-locked", 423, retry_after=30)),
            {**RID, "Retry-After": "30"},
        ),
        (
            "GET",
            MAILBOX,
            429,
            PROBLEM,
            dumps(problem("login-delay", 429)),
            {**RID, "Retry-After": "300"},
        ),
        ("GET", MAILBOX, 500, PROBLEM, dumps(problem("internal", 500)), RID),
        ("GET", MAILBOX, 502, PROBLEM, dumps(problem("capability-missing", 502)), RID),
        ("DELETE", MESSAGE, 502, PROBLEM, dumps(problem("delete-outcome-unknown", 502)), RID),
        ("POST", DELETE_MANY, 502, PROBLEM, dumps(problem("delete-failed", 502)), RID),
        (
            "GET",
            MESSAGES,
            503,
            PROBLEM,
            dumps(problem("pool-exhausted", 503, retry_after=2)),
            {**RID, "Retry-After": "2"},
        ),
        ("GET", MESSAGES, 504, PROBLEM, dumps(problem("upstream-timeout", 504)), RID),
        ("HEAD", MAILBOX, 200, JSON, b"", RID),
        (
            "PUT",
            MAILBOX,
            405,
            PROBLEM,
            dumps(problem("method-not-allowed", 405)),
            {**RID, "Allow": "GET, HEAD"},
        ),
    ],
)
def test_accepts_documented_responses(
    validator: ResponseValidator,
    method: str,
    template: str,
    status: int,
    content_type: str,
    body: bytes | None,
    headers: dict[str, str],
) -> None:
    validator.validate(method, template, status, content_type, body, headers)


def test_header_names_are_case_insensitive(validator: ResponseValidator) -> None:
    validator.validate("GET", MAILBOX, 200, JSON, dumps(stats()), {"x-request-id": "r"})


def test_records_what_it_saw() -> None:
    validator = ResponseValidator(load_spec())
    validator.validate("GET", MAILBOX, 200, JSON, dumps(stats()), RID)
    assert validator.seen == {("GET", MAILBOX, 200)}


def test_lists_the_operations(validator: ResponseValidator) -> None:
    operations = validator.operations()
    assert len(operations) == 19
    assert ("GET", "/v1/mailboxes/{mailbox}/events") in operations
    assert ("POST", DELETE_MANY) in operations
    assert ("DELETE", MESSAGE) in operations


# ---- rejected ---------------------------------------------------------------------------


def rejects(validator: ResponseValidator, match: str, *args: Any) -> None:
    with pytest.raises(AssertionError, match=match):
        validator.validate(*args)


def test_rejects_an_undocumented_status(validator: ResponseValidator) -> None:
    rejects(
        validator,
        r"GET /v1/mailboxes/\{mailbox\} -> 201: Undocumented status code: Received: 201 "
        r"Documented: 200, 400,",
        "GET",
        MAILBOX,
        201,
        JSON,
        dumps(stats()),
        RID,
    )


def test_rejects_a_problem_status_the_operation_does_not_document(
    validator: ResponseValidator,
) -> None:
    body = dumps(problem("request-too-large", 413))
    rejects(validator, "Received: 413 Documented: 200,", "GET", MAILBOX, 413, PROBLEM, body, RID)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({k: v for k, v in stats().items() if k != "octets"}, r'at \$: "octets" is a required'),
        (stats(messages="1"), r'at \$\.messages: "1" is not of type "integer"'),
        (stats(messages=-1), r"at \$\.messages: -1 is less than the minimum of 0"),
        (stats(snapshot_at="yesterday"), r'at \$\.snapshot_at: "yesterday" is not a "date-time"'),
        (stats(password="hunter2"), r"Additional properties are not allowed \('password'"),
        (stats(capabilities="TOP"), r'at \$\.capabilities: "TOP" is not of type "array"'),
    ],
)
def test_rejects_a_body_that_does_not_match(
    validator: ResponseValidator, body: dict[str, Any], match: str
) -> None:
    rejects(validator, match, "GET", MAILBOX, 200, JSON, dumps(body), RID)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (page(messages=[summary(size=None)]), r"at \$\.messages\[0\]\.size: null is not of type"),
        (page(messages=[summary(id="a")]), r'at \$\.messages\[0\]\.id: "a" does not match'),
        (page(messages=[summary(uid="has space")]), r"at \$\.messages\[0\]\.uid"),
        (page(messages=[summary(extra=1)]), r"Unevaluated properties are not allowed \('extra'"),
        (
            page(messages=[summary(**{"from": {"address": 1, "name": None}})]),
            r"at \$\.messages\[0\]\.from: .*\"address\":1.* is not valid under any of the schemas",
        ),
        (page(next_cursor="x" * 201), r'at \$\.next_cursor: "xxx.* is longer than 200 characters'),
    ],
)
def test_rejects_a_page_that_does_not_match(
    validator: ResponseValidator, body: dict[str, Any], match: str
) -> None:
    rejects(validator, match, "GET", MESSAGES, 200, JSON, dumps(body), {**RID, "ETag": '"e"'})


def test_rejects_a_message_summary_where_a_message_is_due(validator: ResponseValidator) -> None:
    headers = {**RID, "ETag": '"m"', "Cache-Control": "private, max-age=31536000, immutable"}
    rejects(
        validator,
        r'at \$: "references" is a required property',  # the first of those missing
        "GET",
        MESSAGE,
        200,
        JSON,
        dumps(summary()),
        headers,
    )
    bad = message(attachments=[{**message()["attachments"][0], "disposition": "download"}])
    rejects(
        validator,
        r"at \$\.attachments\[0\]\.disposition",
        "GET",
        MESSAGE,
        200,
        JSON,
        dumps(bad),
        headers,
    )


def test_lists_every_error_with_its_location(validator: ResponseValidator) -> None:
    with pytest.raises(AssertionError) as caught:
        validator.validate("GET", MAILBOX, 200, JSON, dumps(stats(messages="1", octets=None)), RID)
    assert "at $.messages:" in str(caught.value)
    assert "at $.octets:" in str(caught.value)


@pytest.mark.parametrize(
    ("content_type", "match"),
    [
        (
            "text/html",
            "Undocumented Content-Type: Received: text/html Documented: application/json",
        ),
        (
            "application/problem+json",
            r"Undocumented Content-Type: Received: application/problem\+json",
        ),
        ("", "Missing Content-Type header"),
    ],
)
def test_rejects_an_undocumented_content_type(
    validator: ResponseValidator, content_type: str, match: str
) -> None:
    rejects(validator, match, "GET", MAILBOX, 200, content_type, dumps(stats()), RID)


def test_rejects_json_where_a_problem_is_due(validator: ResponseValidator) -> None:
    body = dumps(problem("not-found", 404))
    rejects(
        validator,
        "Received: application/json; charset=utf-8 Documented: application/problem",
        "GET",
        MAILBOX,
        404,
        JSON,
        body,
        RID,
    )


def test_rejects_a_raw_message_with_another_type(validator: ResponseValidator) -> None:
    headers = {**RID, **IMMUTABLE_M1, "X-Content-Type-Options": "nosniff"}
    rejects(
        validator, "Received: text/plain Documented:", "GET", RAW, 200, "text/plain", b"x", headers
    )


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{", "JSON deserialization error"),
        (b"\xff", "Content deserialization error"),
    ],
)
def test_rejects_a_body_that_is_not_json(
    validator: ResponseValidator, body: bytes, match: str
) -> None:
    rejects(validator, match, "GET", "/healthz", 200, JSON, body, RID)


def test_rejects_nan(validator: ResponseValidator) -> None:
    """JSON has no NaN; Python's json module reads it, and the schema check refuses the float
    (schemathesis shows it as null)."""
    body = b'{"ok": false, "steps": [], "capabilities": [], "messages": NaN, "octets": null}'
    rejects(
        validator, r"at \$\.messages: null is not of types", "POST", CHECK, 200, JSON, body, RID
    )


def test_a_failing_branch_does_not_also_report_its_properties_as_unevaluated(
    validator: ResponseValidator,
) -> None:
    body = dumps(page(messages=[summary(size=None)]))
    with pytest.raises(AssertionError) as caught:
        validator.validate("GET", MESSAGES, 200, JSON, body, {**RID, "ETag": '"e"'})
    assert "size: null is not of type" in str(caught.value)
    assert "Unevaluated" not in str(caught.value)


def test_rejects_a_missing_json_body(validator: ResponseValidator) -> None:
    rejects(validator, "JSON deserialization error", "GET", "/healthz", 200, JSON, None, RID)


def test_rejects_a_body_where_none_is_documented(validator: ResponseValidator) -> None:
    rejects(
        validator,
        "documented without content, but it has a 2-byte body",
        "DELETE",
        MESSAGE,
        204,
        JSON,
        b"{}",
        RID,
    )


def test_rejects_a_body_on_head(validator: ResponseValidator) -> None:
    rejects(validator, "a HEAD response has a", "HEAD", MAILBOX, 200, JSON, dumps(stats()), RID)


@pytest.mark.parametrize(
    ("status", "slug", "headers", "match"),
    [
        (200, None, {}, "required headers are missing from the response: - `X-Request-ID`"),
        (401, "unauthorized", RID, "are missing from the response: - `WWW-Authenticate`"),
        (423, "mailbox-locked", RID, "are missing from the response: - `Retry-After`"),
        (503, "upstream-unavailable", RID, "are missing from the response: - `Retry-After`"),
        (
            503,
            "pool-exhausted",
            {**RID, "Retry-After": "soon"},
            r'header does not conform to the schema: at \$: "soon" is not of type "integer"',
        ),
        (
            503,
            "pool-exhausted",
            {**RID, "Retry-After": "-1"},
            r"header does not conform to the schema: at \$: -1 is less than the minimum of 0",
        ),
        (
            200,
            None,
            {"X-Request-ID": "has space"},
            r'header does not conform to the schema: at \$: "has space" does not match',
        ),
    ],
)
def test_rejects_missing_or_malformed_headers(
    validator: ResponseValidator,
    status: int,
    slug: str | None,
    headers: dict[str, str],
    match: str,
) -> None:
    body = dumps(stats()) if slug is None else dumps(problem(slug, status))
    content_type = JSON if slug is None else PROBLEM
    rejects(validator, match, "GET", MAILBOX, status, content_type, body, headers)


def test_rejects_conditional_headers_that_do_not_fit(validator: ResponseValidator) -> None:
    unquoted = {**RID, "ETag": "W/m", "Cache-Control": "private, max-age=31536000, immutable"}
    rejects(
        validator,
        r'header does not .*: "W/m" does not',
        "GET",
        MESSAGE,
        200,
        JSON,
        dumps(message()),
        unquoted,
    )
    short = {**RID, "ETag": '"m"', "Cache-Control": "max-age=60"}
    rejects(
        validator,
        r'header does not .*immutable" was expected',
        "GET",
        MESSAGE,
        200,
        JSON,
        dumps(message()),
        short,
    )
    rejects(
        validator, "are missing from the response: - `ETag`", "GET", MESSAGES, 304, "", None, RID
    )


def test_rejects_an_attachment_that_a_browser_could_render(validator: ResponseValidator) -> None:
    inline = {
        **RID,
        **IMMUTABLE_M1,
        "Content-Disposition": "inline",
        "X-Content-Type-Options": "nosniff",
    }
    rejects(
        validator,
        r'header does not conform .*: "inline" does not',
        "GET",
        ATTACHMENT,
        200,
        "text/html",
        b"",
        inline,
    )
    sniff = {**RID, **IMMUTABLE_M1, "Content-Disposition": "attachment"}
    rejects(
        validator,
        "are missing from the response: - `X-Content-Type-Options`",
        "GET",
        ATTACHMENT,
        200,
        "text/html",
        b"",
        sniff,
    )


@pytest.mark.parametrize(
    ("status", "body", "headers", "match"),
    [
        (404, problem("internal", 404), RID, r'at \$\.type: "/problems/not-found" was expected'),
        (404, problem("not-found", 500), RID, r"at \$\.status: 404 was expected"),
        (404, problem("no-such-slug", 404), RID, r"at \$\.type"),
        (
            404,
            {**problem("not-found", 404), "request_id": "other"},
            RID,
            "request_id 'other' differs",
        ),
        (
            404,
            {k: v for k, v in problem("not-found", 404).items() if k != "detail"},
            RID,
            r'at \$: "detail" is a required',
        ),
        (
            423,
            problem("mailbox-locked", 423, retry_after=5),
            {**RID, "Retry-After": "30"},
            "retry_after 5 differs",
        ),
        (
            502,
            problem("delete-failed", 502),
            RID,
            r'at \$\.type: "/problems/delete-failed" is not one of',
        ),
    ],
)
def test_rejects_inconsistent_problems(
    validator: ResponseValidator,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    match: str,
) -> None:
    rejects(validator, match, "GET", MAILBOX, status, PROBLEM, dumps(body), headers)


def test_rejects_a_422_without_raw_url(validator: ResponseValidator) -> None:
    body = dumps(problem("message-too-large", 422))
    # (raw_url is required of message-too-large only: the schema says so with if/then)
    rejects(
        validator, "is not valid under any of the schemas", "GET", MESSAGE, 422, PROBLEM, body, RID
    )
    other = dumps(problem("message-too-large", 422, raw_url="/x/raw"))
    rejects(validator, 'no-mail-server" was expected', "GET", MAILBOX, 422, PROBLEM, other, RID)


def test_rejects_an_undocumented_method_unless_405(validator: ResponseValidator) -> None:
    rejects(
        validator,
        "PUT is not documented for this path, so 405 was expected",
        "PUT",
        MAILBOX,
        200,
        JSON,
        b"{}",
        RID,
    )
    body = dumps(problem("method-not-allowed", 405))
    rejects(
        validator,
        "are missing from the response: - `Allow`",
        "PUT",
        MAILBOX,
        405,
        PROBLEM,
        body,
        RID,
    )


def test_rejects_an_undocumented_template(validator: ResponseValidator) -> None:
    rejects(validator, "the path template is not documented", "GET", "/v2/x", 200, JSON, b"{}", RID)


# ---- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method", "template"),
    [
        ("/v1/mailboxes/me", "GET", MAILBOX),
        ("/v1/mailboxes/support-inbox/messages", "GET", MESSAGES),
        ("/v1/mailboxes/me/messages?limit=5&order=asc", "GET", MESSAGES),
        (f"/v1/mailboxes/me/messages/{ID}", "GET", MESSAGE),
        (f"/v1/mailboxes/me/messages/{ID}", "DELETE", MESSAGE),
        (f"/v1/mailboxes/me/messages/{ID}/raw", "GET", RAW),
        (f"/v1/mailboxes/me/messages/{ID}/attachments/1.2", "GET", ATTACHMENT),
        ("/v1/mailboxes/me/messages/delete", "POST", DELETE_MANY),
        ("/v1/mailboxes/me/messages/delete", None, DELETE_MANY),  # concrete before templated
        ("/v1/mailboxes/me/messages/delete", "GET", MESSAGE),  # the one that documents GET
        ("/v1/mailboxes/me/check", "POST", CHECK),
        ("/v1/mailboxes/bad!id", "GET", MAILBOX),  # the server answers it with a problem
        ("/healthz", "GET", "/healthz"),
        ("/docs", "GET", "/docs"),
        ("/docs/swagger-ui.css", "GET", "/docs/{asset}"),
        ("/openapi.json", "GET", "/openapi.json"),
    ],
)
def test_match_path(
    validator: ResponseValidator, path: str, method: str | None, template: str
) -> None:
    assert validator.match_path(path, method) == template


@pytest.mark.parametrize(
    "path",
    [
        "//",
        "/v1",
        "/v1/mailboxes",
        "/v1/mailboxes/",
        "/v1/mailboxes/me/",
        "/v1/mailboxes/a/b",
        "/healthz/x",
        "/docs/a/b",
    ],
)
def test_match_path_finds_nothing(validator: ResponseValidator, path: str) -> None:
    assert validator.match_path(path) is None
    assert validator.match_path(path, "GET") is None


def test_validate_path(validator: ResponseValidator) -> None:
    validator.validate_path("get", "/v1/mailboxes/me", 200, JSON, dumps(stats()), RID)
    validator.validate_path("GET", "/nowhere", 404, PROBLEM, dumps(problem("not-found", 404)), RID)
    with pytest.raises(AssertionError, match="no documented path matches, so 404 was expected"):
        validator.validate_path("GET", "/nowhere", 200, JSON, b"{}", RID)
    with pytest.raises(
        AssertionError, match=r"GET /nowhere -> 404: .*missing from the response: - `X-Request-ID`"
    ):
        validator.validate_path(
            "GET", "/nowhere", 404, PROBLEM, dumps(problem("not-found", 404)), {}
        )


# ---- any document -----------------------------------------------------------------------

TINY: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tiny", "version": "1"},
    "paths": {
        "/things/{n}": {
            "get": {
                "responses": {
                    "2XX": {
                        "description": "ok",
                        "headers": {
                            "Content-Type": {"schema": {"const": "ignored"}},
                            "X-Ratio": {"schema": {"type": "number", "maximum": 1}},
                            "X-Flag": {"schema": {"type": "boolean"}},
                            "X-Free": {"description": "no schema"},
                            "X-Ref": {"$ref": "#/components/headers/Chain"},
                        },
                        "content": {
                            "application/*": {"schema": {"$ref": "#/components/schemas/Thing"}},
                        },
                    },
                }
            }
        },
        "/listed": {"get": {"responses": {"200": {"$ref": "#/x-list/0"}}}},
    },
    "x-list": [{"description": "from a list"}],
    "components": {
        "schemas": {
            "Thing": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
        },
        "headers": {
            "Chain": {"$ref": "#/components/headers/Real"},
            "Real": {"required": True, "schema": {"type": "string", "pattern": "^a"}},
        },
    },
}


@pytest.fixture(scope="module")
def tiny() -> ResponseValidator:
    return ResponseValidator(TINY)


def test_any_document_status_ranges_media_ranges_and_header_types(
    tiny: ResponseValidator,
) -> None:
    headers = {"X-Ratio": "0.5", "X-Flag": "true", "X-Free": "anything", "X-Ref": "abc"}
    tiny.validate("GET", "/things/{n}", 201, "application/vnd.thing+json", b'{"n": 1}', headers)
    tiny.validate("GET", "/things/{n}", 200, "application/x-anything", None, {"X-Ref": "a"})
    assert tiny.match_path("/things/7") == "/things/{n}"


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"X-Ref": "a", "X-Ratio": "half"}, r'at \$: "half" is not of type "number"'),
        ({"X-Ref": "a", "X-Ratio": "2"}, r"at \$: 2(\.0)? is greater than the maximum of 1"),
        # schemathesis reads the usual spellings (true, yes, 1, on, ...) as booleans
        ({"X-Ref": "a", "X-Flag": "maybe"}, r'at \$: "maybe" is not of type "boolean"'),
        ({"X-Ref": "b"}, r'at \$: "b" does not match "\^a"'),
        ({}, "are missing from the response: - `X-Ref`"),
    ],
)
def test_any_document_header_errors(
    tiny: ResponseValidator, headers: dict[str, str], match: str
) -> None:
    with pytest.raises(AssertionError, match=match):
        tiny.validate("GET", "/things/{n}", 200, "application/json", b'{"n": 1}', headers)


def test_any_document_reference_into_a_list(tiny: ResponseValidator) -> None:
    tiny.validate("GET", "/listed", 200, "", None, {})


def one_response(response: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "broken", "version": "1"},
        "paths": {"/x": {"get": {"responses": {"200": response}}}},
        "x-list": ["not an object"],
        "components": {"responses": {"Loop": {"$ref": "#/components/responses/Loop"}}},
    }


@pytest.mark.parametrize(
    ("ref", "error", "match"),
    [
        ("other.yaml#/components/responses/X", RefResolutionError, "other.yaml"),
        ("#/x-list/0", InvalidSchema, "`#/x-list/0` must be an object"),
        ("#/nowhere", RefResolutionError, "'/nowhere' does not exist"),
    ],
)
def test_any_document_broken_references(ref: str, error: type[Exception], match: str) -> None:
    """A broken document is refused as such (not as a response that does not match)."""
    validator = ResponseValidator(one_response({"$ref": ref}))
    with pytest.raises(error, match=match):
        validator.validate("GET", "/x", 200, "", None, {})


def test_a_reference_loop_is_the_document_checks_to_refuse() -> None:
    """schemathesis follows a $ref loop into an empty response; the document check (run on
    openapi/openapi.yaml in test_spec.py) refuses the document."""
    document = one_response({"$ref": "#/components/responses/Loop"})
    with pytest.raises((OpenAPIValidationError, RecursionError)):
        validate_openapi(document)


def test_more_errors_than_shown() -> None:
    names = [f"p{i:02}" for i in range(15)]
    validator = ResponseValidator(
        {
            "openapi": "3.1.0",
            "info": {"title": "many", "version": "1"},
            "paths": {
                "/": {
                    "get": {
                        "responses": {
                            "200": {
                                "description": "many",
                                "content": {
                                    "application/json": {
                                        "schema": {
                                            "type": "object",
                                            "properties": {n: {"type": "string"} for n in names},
                                        }
                                    }
                                },
                            }
                        }
                    }
                }
            },
        }
    )
    body = dumps({n: 1 for n in names})
    with pytest.raises(AssertionError, match=r"\(and 5 more\)$"):
        validator.validate("GET", "/", 200, "application/json", body, {})


def test_a_document_without_paths() -> None:
    validator = ResponseValidator({"openapi": "3.1.0", "paths": None})
    assert validator.operations() == []
    assert validator.match_path("/") is None
