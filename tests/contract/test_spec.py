"""The OpenAPI document: valid, lint-clean, complete, and consistent with itself."""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from yamllint import linter
from yamllint.config import YamlLintConfig

from gateway.config import Scope
from gateway.contract import DOCS_ASSETS, load_spec, parse_yaml, spec_json

ROOT = Path(__file__).resolve().parents[2]
REPO_SPEC = ROOT / "openapi" / "openapi.yaml"
V1_METHODS = ("get", "post", "delete")

#: Every problem type, with its status and whether Retry-After comes with it.
PROBLEMS: dict[str, tuple[int, bool]] = {
    "invalid-request": (400, False),
    "unauthorized": (401, False),
    "forbidden": (403, False),
    "not-found": (404, False),
    "method-not-allowed": (405, False),
    "cursor-expired": (410, False),
    "request-too-large": (413, False),
    "message-too-large": (422, False),
    "message-too-complex": (422, False),
    "no-mail-server": (422, False),
    "mailbox-locked": (423, True),
    "login-delay": (429, True),
    "login-throttled": (429, True),
    "client-login-rate": (429, True),
    "upstream-login-rate": (429, True),
    "internal": (500, False),
    "upstream-auth-failed": (502, False),
    "upstream-error": (502, False),
    "capability-missing": (502, False),
    "delete-outcome-unknown": (502, False),
    "delete-failed": (502, False),
    "upstream-unavailable": (503, True),
    "pool-exhausted": (503, True),
    "parser-busy": (503, True),
    "events-unavailable": (503, True),
    "event-readers-busy": (503, True),
    "token-unavailable": (503, True),
    "mailbox-needs-reauth": (503, True),
    "upstream-timeout": (504, False),
}

EXPECTED_OPERATIONS = {
    ("get", "/v1/mailboxes/{mailbox}"),
    ("get", "/v1/mailboxes/{mailbox}/messages"),
    ("get", "/v1/mailboxes/{mailbox}/messages/{id}"),
    ("delete", "/v1/mailboxes/{mailbox}/messages/{id}"),
    ("get", "/v1/mailboxes/{mailbox}/messages/{id}/raw"),
    ("get", "/v1/mailboxes/{mailbox}/messages/{id}/attachments/{attachment}"),
    ("post", "/v1/mailboxes/{mailbox}/messages/delete"),
    ("post", "/v1/mailboxes/{mailbox}/check"),
    ("get", "/v1/mailboxes/{mailbox}/events"),
    ("get", "/v1/mailboxes/{mailbox}/events/stream"),
    ("get", "/v1/webhooks/{webhook}/failed"),
    ("post", "/v1/webhooks/{webhook}/failed/{event}/retry"),
    ("get", "/"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
    ("get", "/docs/{asset}"),
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return load_spec()


def package_spec_file() -> Path:
    path = resources.files("gateway.contract").joinpath("openapi.yaml")
    assert isinstance(path, Path)
    return path


def deref(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = spec
        for token in ref[2:].split("/"):
            node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for template, item in spec["paths"].items():
        for method in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
            if method in item:
                yield method, template, item[method]


def v1_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    return ((m, t, op) for m, t, op in operations(spec) if t.startswith("/v1/"))


def all_responses(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, status, response) for every response of every operation, dereferenced."""
    for method, template, op in operations(spec):
        for status, response in op["responses"].items():
            yield f"{method.upper()} {template} {status}", status, deref(spec, response)
    for name in ("MethodNotAllowed", "NotFound"):
        response = spec["components"]["responses"][name]
        status = "405" if name == "MethodNotAllowed" else "404"
        yield f"components/responses/{name}", status, response


def problem_types(spec: dict[str, Any], response: dict[str, Any]) -> set[str]:
    """The problem types a problem response may carry, from its schema's refinement."""
    schema = response["content"]["application/problem+json"]["schema"]
    assert schema["allOf"][0] == {"$ref": "#/components/schemas/Problem"}
    refinement = schema["allOf"][1]["properties"]["type"]
    return {refinement["const"]} if "const" in refinement else set(refinement["enum"])


# ---- the file ----------------------------------------------------------------------------


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    # The OpenAPI 3.1 base dialect: JSON Schema 2020-12 plus the OpenAPI vocabulary. Swagger
    # UI 5 shows a warning for any other value (e.g. plain 2020-12).
    assert spec["jsonSchemaDialect"] == "https://spec.openapis.org/oas/3.1/dialect/base"
    validate_openapi(spec)


def test_the_validator_would_catch_a_broken_spec() -> None:
    spec = load_spec()
    spec["paths"]["/v1/mailboxes/{mailbox}"]["get"]["responses"]["200"] = {"headers": {}}
    with pytest.raises(OpenAPIValidationError):
        validate_openapi(spec)


def test_yaml_is_lint_clean() -> None:
    config = YamlLintConfig(
        "extends: default\n"
        "rules:\n"
        "  document-start: disable\n"
        "  line-length: disable\n"  # markdown tables in descriptions cannot wrap
        "  key-duplicates: enable\n"
        "  truthy: {allowed-values: ['true', 'false'], check-keys: true}\n"
    )
    text = package_spec_file().read_text(encoding="utf-8")
    problems = [f"{p.line}:{p.column} {p.message}" for p in linter.run(text, config)]
    assert problems == []


def test_repository_copy_is_the_package_file() -> None:
    """openapi/openapi.yaml is a symlink to the package data, so they cannot drift."""
    assert REPO_SPEC.is_symlink()
    assert REPO_SPEC.resolve() == package_spec_file().resolve()


def test_spec_is_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_data = pyproject["tool"]["setuptools"]["package-data"]
    assert "openapi.yaml" in package_data["gateway.contract"]


def test_load_spec_returns_a_fresh_copy() -> None:
    first = load_spec()
    first["info"]["title"] = "changed"
    assert load_spec()["info"]["title"] == "pop3gw"


def test_spec_json_is_the_spec_and_cached() -> None:
    assert json.loads(spec_json()) == load_spec()
    assert spec_json() is spec_json()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("responses:\n  200: {}\n", "non-string key 200"),
        ("base: &b {x: 1}\nother:\n  <<: *b\n", "merge keys"),
    ],
)
def test_parse_yaml_refuses_what_json_cannot_say(text: str, message: str) -> None:
    with pytest.raises(yaml.YAMLError, match=re.escape(message)):
        parse_yaml(text)


def test_parse_yaml_keeps_dates_and_yes_as_strings() -> None:
    assert parse_yaml("d: 2024-05-01T10:00:00Z\ny: yes\nt: true\nn: null\n") == {
        "d": "2024-05-01T10:00:00Z",
        "y": "yes",
        "t": True,
        "n": None,
    }


# ---- operations -------------------------------------------------------------------------


def test_exactly_the_api_v1_operations(spec: dict[str, Any]) -> None:
    assert {(m, t) for m, t, _ in operations(spec)} == EXPECTED_OPERATIONS


def test_operation_ids_are_unique(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids)) == len(EXPECTED_OPERATIONS)


def test_every_v1_operation_lists_every_security_scheme(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["basicAuth"] == {**schemes["basicAuth"], "type": "http", "scheme": "basic"}
    assert schemes["xoauth2Auth"] == {
        **schemes["xoauth2Auth"],
        "type": "http",
        "scheme": "XOAUTH2",
    }
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    for method, template, op in v1_operations(spec):
        if "/events" in template or template.startswith("/v1/webhooks/"):
            # events exist only for configured (watched) mailboxes, webhooks are the
            # operator's: API keys only
            assert op["security"] == [{"bearerAuth": []}], (method, template)
            continue
        assert op["security"] == [{"basicAuth": []}, {"xoauth2Auth": []}, {"bearerAuth": []}], (
            method,
            template,
        )


def test_the_intro_names_only_real_scopes(spec: dict[str, Any]) -> None:
    """The paragraph on configured mailboxes names, in backticks, exactly the scopes an API
    key can have (it once named a `check` scope that does not exist)."""
    intro = spec["info"]["description"]
    start = intro.index("**Configured mailboxes**")
    paragraph = intro[start : intro.index("\n\n", start)]
    named = set(re.findall(r"`([a-z]+)`", paragraph))
    assert named == set(get_args(Scope))


def test_operational_endpoints_need_no_credentials(spec: dict[str, Any]) -> None:
    for method, template, op in operations(spec):
        if template == "/metrics":
            # Open unless the operator sets a metrics token.
            assert op["security"] == [{}, {"metricsBearer": []}]
        elif not template.startswith("/v1/"):
            assert op["security"] == [], (method, template)


def test_every_path_parameter_is_declared(spec: dict[str, Any]) -> None:
    for method, template, op in operations(spec):
        declared = {
            p["name"]
            for p in (deref(spec, p) for p in op.get("parameters", []))
            if p["in"] == "path"
        }
        assert declared == set(re.findall(r"\{([^}]+)\}", template)), (method, template)


@pytest.mark.parametrize("status", ["401", "403", "404", "500"])
def test_every_v1_operation_documents_the_common_problems(
    spec: dict[str, Any], status: str
) -> None:
    for method, template, op in v1_operations(spec):
        response = deref(spec, op["responses"].get(status))
        assert response is not None, f"{method.upper()} {template} lacks {status}"
        assert problem_types(spec, response) <= {f"/problems/{s}" for s in PROBLEMS}
        slug_statuses = {
            PROBLEMS[t.removeprefix("/problems/")][0] for t in problem_types(spec, response)
        }
        assert slug_statuses == {int(status)}


def test_every_operation_documents_500(spec: dict[str, Any]) -> None:
    for method, template, op in operations(spec):
        assert op["responses"].get("500") == {"$ref": "#/components/responses/Internal"}, (
            method,
            template,
        )


def test_every_error_response_is_a_problem_with_a_consistent_status(spec: dict[str, Any]) -> None:
    for where, status, response in all_responses(spec):
        if int(status) < 400 or where.startswith("GET /readyz 503"):
            continue
        assert list(response["content"]) == ["application/problem+json"], where
        for problem_type in problem_types(spec, response):
            slug = problem_type.removeprefix("/problems/")
            assert PROBLEMS[slug][0] == int(status), where
        refinement = response["content"]["application/problem+json"]["schema"]["allOf"][1]
        assert refinement["properties"]["status"] == {"const": int(status)}, where


def test_every_response_carries_x_request_id(spec: dict[str, Any]) -> None:
    for where, _, response in all_responses(spec):
        header = deref(spec, response["headers"]["X-Request-ID"])
        assert header["required"] is True, where


def test_retry_after_with_423_429_503(spec: dict[str, Any]) -> None:
    for where, status, response in all_responses(spec):
        header = deref(spec, response.get("headers", {}).get("Retry-After"))
        if where.startswith("GET /readyz 503"):
            assert header is not None
            assert header["required"] is False  # a probe, not a problem: when known
        elif status in ("423", "429", "503"):
            assert header is not None, where
            assert header["required"] is True, where
            assert header["schema"] == {"type": "integer", "minimum": 0}
        else:
            assert header is None, where


def test_401_challenges(spec: dict[str, Any]) -> None:
    header = deref(
        spec, spec["components"]["responses"]["Unauthorized"]["headers"]["WWW-Authenticate"]
    )
    assert header["required"] is True


def test_405_names_the_allowed_methods(spec: dict[str, Any]) -> None:
    header = deref(spec, spec["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"])
    assert header["required"] is True


def test_message_too_large_or_too_complex_points_to_raw(spec: dict[str, Any]) -> None:
    response = spec["components"]["responses"]["MessageTooLarge"]
    schema = response["content"]["application/problem+json"]["schema"]
    refinement = schema["allOf"][1]
    assert refinement["if"]["properties"]["type"] == {
        "enum": ["/problems/message-too-large", "/problems/message-too-complex"]
    }
    assert "raw_url" in refinement["then"]["required"]
    example = response["content"]["application/problem+json"]["example"]
    assert example["raw_url"].endswith("/raw")
    assert example["raw_url"] in example["detail"]


def test_conditional_gets(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    listing = paths["/v1/mailboxes/{mailbox}/messages"]["get"]
    message = paths["/v1/mailboxes/{mailbox}/messages/{id}"]["get"]
    for op in (listing, message):
        assert {"$ref": "#/components/parameters/IfNoneMatch"} in op["parameters"]
        assert "304" in op["responses"]
        assert "ETag" in op["responses"]["200"]["headers"]
        assert "ETag" in op["responses"]["304"]["headers"]
    cache_control = deref(spec, message["responses"]["200"]["headers"]["Cache-Control"])
    assert cache_control["schema"]["const"] == "private, max-age=31536000, immutable"
    etag = deref(spec, message["responses"]["200"]["headers"]["ETag"])
    assert re.fullmatch(etag["schema"]["pattern"], '"abc"')
    assert re.fullmatch(etag["schema"]["pattern"], 'W/"abc"')  # compressed, or a weak 304
    strong = deref(spec, {"$ref": "#/components/headers/StrongETag"})
    assert not re.fullmatch(strong["schema"]["pattern"], 'W/"abc"')
    assert re.fullmatch(strong["schema"]["pattern"], '"abc"')


def test_query_parameters(spec: dict[str, Any]) -> None:
    params = {k: v for k, v in spec["components"]["parameters"].items()}
    assert params["Limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 500,
        "default": 50,
    }
    assert params["Cursor"]["schema"]["maxLength"] == 200
    assert params["Order"]["schema"] == {
        "type": "string",
        "enum": ["desc", "asc"],
        "default": "desc",
    }
    assert params["Fresh"]["schema"]["type"] == "boolean"


@pytest.mark.parametrize(
    ("schema_at", "good", "bad"),
    [
        (
            "#/components/parameters/Mailbox",
            ["me", "support-inbox", "a", "A.b_c-9", "x" * 64],
            ["", "-x", ".x", "_x", "x" * 65, "a/b", "a b", "ü"],
        ),
        (
            "#/components/schemas/MessageId",
            ["ab", "MTcxNDU2NDgwMC5NMVA0MjQyLm14LmV4YW1wbGUub3Jn", "a-_b", "x" * 100],
            ["a", "x" * 101, "a=", "a+b", "a/b", "a.b"],
        ),
        (
            "#/components/schemas/AttachmentId",
            ["1", "2", "1.2", "10.20.3"],
            ["", "a", "1.", ".1", "1..2", "-1", "../1"],
        ),
    ],
)
def test_identifier_patterns(
    spec: dict[str, Any], schema_at: str, good: list[str], bad: list[str]
) -> None:
    node = deref(spec, {"$ref": schema_at})
    schema = deref(spec, node.get("schema", node))
    validator = Draft202012Validator(schema)
    assert [v for v in good if not validator.is_valid(v)] == []
    assert [v for v in bad if validator.is_valid(v)] == []


def test_docs_asset_parameter_lists_the_served_assets(spec: dict[str, Any]) -> None:
    (param,) = spec["paths"]["/docs/{asset}"]["get"]["parameters"]
    assert set(param["schema"]["enum"]) == set(DOCS_ASSETS)


# ---- problem types ----------------------------------------------------------------------


def test_every_problem_slug_is_in_the_enum(spec: dict[str, Any]) -> None:
    enum = spec["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    assert enum == [f"/problems/{slug}" for slug in PROBLEMS]


def test_every_problem_slug_is_documented(spec: dict[str, Any]) -> None:
    description = spec["components"]["schemas"]["Problem"]["properties"]["type"]["description"]
    rows = {
        m.group(1): (int(m.group(2)), m.group(3))
        for m in re.finditer(r"^\| `([a-z-]+)` \| (\d{3}) \| .+ \| (yes|no) \|$", description, re.M)
    }
    assert rows == {
        slug: (status, "yes" if retry else "no") for slug, (status, retry) in PROBLEMS.items()
    }


def test_every_problem_slug_has_a_response(spec: dict[str, Any]) -> None:
    carried: set[str] = set()
    for _, _, response in all_responses(spec):
        if "application/problem+json" in response.get("content", {}):
            carried |= problem_types(spec, response)
    assert carried == {f"/problems/{slug}" for slug in PROBLEMS}


def test_problem_shape(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status", "detail", "request_id"]
    assert problem["properties"]["retry_after"]["type"] == "integer"
    assert problem["properties"]["instance"]["type"] == "string"
    assert problem.get("additionalProperties", True) is True  # RFC 9457 extensions


# ---- examples ---------------------------------------------------------------------------


def walk(node: Any, pointer: str = "") -> Iterator[tuple[str, Any]]:
    yield pointer, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{pointer}/{index}")


def collect_examples(spec: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(where, schema pointer, example) for every example in the document."""
    for pointer, node in walk(spec):
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("examples"), list):
            for index, example in enumerate(node["examples"]):
                yield f"{pointer}/examples/{index}", pointer, example
        if "schema" in node:
            if "example" in node:
                yield f"{pointer}/example", f"{pointer}/schema", node["example"]
            if isinstance(node.get("examples"), dict):
                for name, example in node["examples"].items():
                    yield f"{pointer}/examples/{name}", f"{pointer}/schema", example["value"]


def test_every_example_matches_its_schema(spec: dict[str, Any]) -> None:
    registry: Registry[Any] = Registry().with_resource(
        "urn:spec", DRAFT202012.create_resource(spec)
    )
    examples = list(collect_examples(spec))
    assert len(examples) >= 20
    failures = []
    for where, schema_pointer, example in examples:
        validator = Draft202012Validator(
            {"$ref": f"urn:spec#{schema_pointer}"},
            registry=registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        failures += [f"{where}: {e.message}" for e in validator.iter_errors(example)]
    assert failures == []


def test_examples_hold_no_secrets() -> None:
    text = package_spec_file().read_text(encoding="utf-8")
    # Credentials appear only as placeholders such as <password> or <api-key>.
    for candidate in re.findall(r"Basic ([A-Za-z0-9+/]{4,}={0,2})", text):
        try:
            decoded = base64.b64decode(candidate, validate=True)
        except binascii.Error:
            continue
        assert b":" not in decoded, candidate
    assert not re.search(r"Bearer (?!<|realm=)\S", text)
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*(?!<)\S", text)
    # Addresses and hosts are the reserved example domains (RFC 2606).
    for domain in re.findall(r"@([A-Za-z0-9.-]+\.[A-Za-z]{2,})", text):
        assert re.fullmatch(r"(.+\.)?example\.(com|org|net)", domain), domain
