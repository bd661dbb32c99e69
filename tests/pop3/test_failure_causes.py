"""The words a connection or TLS failure is described with: our own, precise, and the same
for every spelling the operating system and OpenSSL give them."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest

from gateway.pop3 import POP3Client, POP3ConnectionError, server_address
from gateway.pop3.protocol import _os_cause, _ssl_cause


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    exc.verify_message = message
    return exc


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "the name did not resolve",
        ),
        (
            socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
            "the name did not resolve (temporary DNS failure)",
        ),
        (
            socket.gaierror(socket.EAI_SERVICE, "Servname not supported"),
            "the name did not resolve (Servname not supported)",
        ),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), "connection refused"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "network unreachable"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "host unreachable"),
        (
            OSError(
                "Multiple exceptions: [Errno 111] Connect call failed ('::1', 995, 0, 0), "
                "[Errno 111] Connect call failed ('127.0.0.1', 995)"
            ),
            "connection refused",
        ),
        (
            OSError(
                "Multiple exceptions: [Errno 101] Network is unreachable, "
                "[Errno 111] Connect call failed ('127.0.0.1', 995)"
            ),
            "network unreachable, connection refused",
        ),
        (OSError(errno.EACCES, "Permission denied"), "Permission denied"),
        (OSError("something else"), "something else"),
    ],
)
def test_connection_causes(exc: OSError, words: str) -> None:
    assert _os_cause(exc) == words


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (verify_error(18, "self-signed certificate"), "self-signed certificate"),
        (verify_error(10, "certificate has expired"), "certificate has expired"),
        (verify_error(9, "certificate is not yet valid"), "certificate is not yet valid"),
        (
            verify_error(20, "unable to get local issuer certificate"),
            "certificate issued by an unknown authority",
        ),
        (
            verify_error(62, "Hostname mismatch, certificate is not valid for 'x'."),
            "hostname mismatch (the certificate is not valid for pop.example.com)",
        ),
        (verify_error(50, "application verification failure"), "application verification failure"),
        (verify_error(50, ""), "certificate verification failed"),
    ],
)
def test_certificate_causes(exc: ssl.SSLError, words: str) -> None:
    assert _ssl_cause(exc, "pop.example.com") == words


def test_handshake_causes() -> None:
    exc = ssl.SSLError(1, "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version")
    exc.reason = "TLSV1_ALERT_PROTOCOL_VERSION"
    assert _ssl_cause(exc) == "no TLS version in common (TLS 1.2 or newer is required)"
    exc.reason = "SOME_NEW_REASON"
    assert _ssl_cause(exc) == "some new reason"
    exc.reason = None
    assert _ssl_cause(exc) == str(exc)


def test_addresses() -> None:
    assert server_address("pop.example.com", 995) == "pop.example.com:995"
    assert server_address("::1", 110) == "[::1]:110"


async def test_a_name_that_cannot_be_looked_up() -> None:
    """A label longer than 63 octets fails before any lookup (IDNA), named all the same."""
    host = "a" * 64 + ".invalid"
    with pytest.raises(POP3ConnectionError) as caught:
        await POP3Client.connect(host, 995)
    assert caught.value.cause == "not a valid host name"
    assert caught.value.address == f"{host}:995"
    assert caught.value.connecting
