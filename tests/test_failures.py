"""Failures are sorted once, by the ``reason`` their class names: the login metric's label,
/check's words and the API's problem type all follow from it."""

from __future__ import annotations

import pytest

from gateway.api.errors import PROBLEMS, classify
from gateway.pop3 import (
    PoolClosedError,
    PoolTimeoutError,
    POP3ArgumentError,
    POP3AuthError,
    POP3CapabilityError,
    POP3ConnectionError,
    POP3Error,
    POP3InjectionError,
    POP3InUseError,
    POP3LineTooLongError,
    POP3LoginDelayError,
    POP3OutcomeUnknownError,
    POP3ProtocolError,
    POP3ResponseError,
    POP3ResponseTooLargeError,
    POP3StateError,
    POP3SysPermError,
    POP3SysTempError,
    POP3TimeoutError,
    POP3TLSError,
    POP3UpdateError,
    POP3UTF8Error,
)
from gateway.service import (
    CapabilityMissingError,
    ClientLoginRateError,
    DeleteFailedError,
    DeleteOutcomeUnknownError,
    InvalidInputError,
    LoginThrottledError,
    MessageNotFoundError,
    MessageTooLargeError,
    NeedsReauthError,
    ParseBusyError,
    ParseFailedError,
    SecretUnavailableError,
    TokenUnavailableError,
    UpstreamLoginRateError,
    describe_failure,
    failure_reason,
    login_outcome,
)


def refused(cls: type[POP3ResponseError], command: str = "RETR") -> POP3ResponseError:
    return cls(command, None, "server words")


# failure, its reason, the login metric label, /check's words, the problem (passthrough)
CASES: list[tuple[BaseException, str, str, str, str]] = [
    (
        refused(POP3AuthError, "PASS"),
        "auth",
        "auth",
        "the server rejected the credentials",
        "unauthorized",
    ),
    (
        refused(POP3InUseError, "PASS"),
        "in-use",
        "in-use",
        "the mailbox is locked by another session",
        "mailbox-locked",
    ),
    (
        refused(POP3LoginDelayError, "PASS"),
        "login-delay",
        "login-delay",
        "the server asks to wait before logging in again",
        "login-delay",
    ),
    (
        refused(POP3SysTempError),
        "sys-temp",
        "other",
        "the server refused RETR",
        "upstream-unavailable",
    ),
    (refused(POP3SysPermError), "sys-perm", "other", "the server refused RETR", "upstream-error"),
    (refused(POP3UTF8Error), "refused", "other", "the server refused RETR", "upstream-error"),
    (
        refused(POP3UpdateError, "QUIT"),
        "update-failed",
        "other",
        "the server refused QUIT",
        "upstream-error",
    ),
    (refused(POP3ResponseError), "refused", "other", "the server refused RETR", "upstream-error"),
    (
        POP3TimeoutError("slow", phase="greeting"),
        "timeout",
        "timeout",
        "timed out (greeting)",
        "upstream-timeout",
    ),
    (
        POP3TLSError("bad cert"),
        "tls",
        "tls",
        "TLS failed (certificate not trusted, wrong host name, or handshake error)",
        "upstream-error",
    ),
    (
        POP3InjectionError("injected"),
        "tls",
        "tls",
        "TLS failed (certificate not trusted, wrong host name, or handshake error)",
        "upstream-error",
    ),
    (
        POP3ConnectionError("refused"),
        "unreachable",
        "unreachable",
        "cannot reach the server or the connection broke",
        "upstream-error",
    ),
    (
        POP3OutcomeUnknownError("lost"),
        "outcome-unknown",
        "unreachable",
        "cannot reach the server or the connection broke",
        "upstream-error",
    ),
    (
        POP3ProtocolError("garbage"),
        "protocol",
        "other",
        "the server answered something that is not POP3",
        "upstream-error",
    ),
    (
        POP3LineTooLongError("long"),
        "protocol",
        "other",
        "the server answered something that is not POP3",
        "upstream-error",
    ),
    (
        POP3ResponseTooLargeError(1024, "UIDL"),
        "reply-too-large",
        "other",
        "the server's reply was larger than the gateway accepts",
        "upstream-error",
    ),
    (POP3ArgumentError("CR in it"), "argument", "other", "POP3ArgumentError", "invalid-request"),
    (POP3StateError("not now"), "state", "other", "POP3StateError", "upstream-error"),
    (
        POP3CapabilityError("no STLS"),
        "capability",
        "other",
        "POP3CapabilityError",
        "upstream-error",
    ),
    (POP3Error("odd"), "other", "other", "POP3Error", "upstream-error"),
    (PoolTimeoutError("busy"), "pool-timeout", "other", "PoolTimeoutError", "pool-exhausted"),
    (PoolClosedError("closing"), "pool-closed", "other", "PoolClosedError", "pool-exhausted"),
    (
        ConnectionRefusedError(),
        "unreachable",
        "unreachable",
        "cannot reach the server or the connection broke",
        "",
    ),
    (TimeoutError(), "timeout", "timeout", "timed out (network)", ""),
    (RuntimeError("a bug"), "other", "other", "RuntimeError", ""),
]


@pytest.mark.parametrize(("exc", "reason", "label", "words", "slug"), CASES)
def test_one_reason_three_readers(
    exc: BaseException, reason: str, label: str, words: str, slug: str
) -> None:
    assert failure_reason(exc) == reason
    assert login_outcome(exc) == label
    assert describe_failure(exc) == words
    problem = classify(exc, passthrough=True)
    if slug:
        assert problem is not None
        assert problem.slug == slug
        assert "server words" not in problem.detail  # our own words only
    else:
        assert problem is None  # not ours: a 500


def test_configured_credentials_are_the_operators_problem() -> None:
    auth = classify(refused(POP3AuthError, "PASS"), passthrough=False)
    assert auth is not None
    assert auth.slug == "upstream-auth-failed"
    argument = classify(POP3ArgumentError("CR"), passthrough=False)
    assert argument is not None
    assert argument.slug == "upstream-auth-failed"
    passthrough = classify(refused(POP3AuthError, "PASS"), passthrough=True)
    assert passthrough is not None
    assert dict(passthrough.headers)["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    ("exc", "slug"),
    [
        (InvalidInputError("bad"), "invalid-request"),
        (MessageNotFoundError("gone"), "not-found"),
        (MessageTooLargeError(10, 5), "message-too-large"),
        (CapabilityMissingError("UIDL"), "capability-missing"),
        (LoginThrottledError(12.4), "login-throttled"),
        (ClientLoginRateError(3.2), "client-login-rate"),
        (UpstreamLoginRateError(0.2), "upstream-login-rate"),
        (DeleteOutcomeUnknownError("lost"), "delete-outcome-unknown"),
        (DeleteFailedError("refused"), "delete-failed"),
        (NeedsReauthError("refused grant"), "mailbox-needs-reauth"),
        (TokenUnavailableError("endpoint down", retry_after=7.2), "token-unavailable"),
    ],
)
def test_service_failures(exc: BaseException, slug: str) -> None:
    problem = classify(exc, passthrough=True)
    assert problem is not None
    assert problem.slug == slug
    if slug == "login-throttled":
        assert dict(problem.headers)["Retry-After"] == "12"
    if slug.endswith("-login-rate"):  # at least a second, never "0"
        assert dict(problem.headers)["Retry-After"] in ("3", "1")
    if slug == "token-unavailable":  # when the token endpoint is asked again, rounded up
        assert dict(problem.headers)["Retry-After"] == "8"


def test_every_reason_in_the_table_is_a_reason_some_class_names() -> None:
    named = {failure_reason(case[0]) for case in CASES} | {
        "invalid-input",
        "not-found",
        "too-large",
        "capability-missing",
        "login-throttled",
        "client-login-rate",
        "upstream-login-rate",
        "delete-outcome-unknown",
        "delete-failed",
        ParseFailedError.reason,
        ParseBusyError.reason,
        SecretUnavailableError.reason,
        NeedsReauthError.reason,
        TokenUnavailableError.reason,
    }
    assert set(PROBLEMS) <= named


def test_a_reply_too_large_says_which_and_how_large() -> None:
    problem = classify(POP3ResponseTooLargeError(16_777_216, "UIDL"), passthrough=True)
    assert problem is not None
    assert problem.slug == "upstream-error"  # no contract change: the slug stays
    assert problem.detail == "the mail server's reply to UIDL was larger than 16777216 bytes"
    anonymous = classify(POP3ResponseTooLargeError(100), passthrough=False)
    assert anonymous is not None
    assert anonymous.detail == "the mail server's reply to a command was larger than 100 bytes"
