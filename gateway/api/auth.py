"""Who is calling: HTTP Basic passthrough on ``me``, API keys on configured mailboxes."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress

from aiohttp import web

from ..accounts import Account, ApiKey, Directory
from .errors import Problem

_BASIC_CHALLENGE = (("WWW-Authenticate", 'Basic realm="pop3gw", charset="UTF-8"'),)
_BEARER_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="pop3gw"'),)
_FORBIDDEN_CHARS = frozenset("\r\n\0")
MAX_AUTH_HEADER = 8192


def _credentials(request: web.Request, scheme: str) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    if len(header) > MAX_AUTH_HEADER:
        raise Problem("invalid-request", "the Authorization header is too long")
    found_scheme, _, value = header.strip().partition(" ")
    if found_scheme.lower() != scheme.lower():
        return None
    return value.strip()


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def client_address(request: web.Request, trusted: Networks) -> str | None:
    """Where the request comes from: the peer's address, or, when the peer is a trusted
    proxy, the nearest address in ``X-Forwarded-For`` that is not one (read from the right:
    what a client writes further left is not vouched for by anyone we trust)."""
    peer = request.remote
    if not trusted or peer is None:
        return peer
    try:
        hop: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if not any(hop in net for net in trusted):
        return peer
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    for entry in reversed(forwarded.split(",")[-32:]):
        try:
            hop = ipaddress.ip_address(entry.strip())
        except ValueError:
            break  # garbage: the last trusted hop is the nearest address we know
        if not any(hop in net for net in trusted):
            return str(hop)
    return str(hop)


def resolve_account(request: web.Request, directory: Directory, scope: str) -> Account:
    """The account for ``{mailbox}`` in the path, with the request's client address, or a
    :class:`Problem` (401/403/404/400)."""
    client = client_address(request, directory.trusted_proxies)
    account = _resolve(request, directory, scope, client)
    # A client sending the same credentials again finds its own account as it was.
    return account if account.client == client else dataclasses.replace(account, client=client)


def _resolve(request: web.Request, directory: Directory, scope: str, client: str | None) -> Account:
    mailbox_id = request.match_info["mailbox"]
    if mailbox_id == "me":
        return _passthrough(request, directory, client)
    token = _credentials(request, "Bearer")
    if not token:
        raise Problem(
            "unauthorized", "send an API key as 'Authorization: Bearer <key>'", _BEARER_CHALLENGE
        )
    key = directory.api_keys.authenticate(token)
    if key is None:
        raise Problem("unauthorized", "the API key is not valid", _BEARER_CHALLENGE)
    account = directory.mailboxes.get(mailbox_id)
    # A mailbox the key is not granted looks like an unknown one: ids cannot be probed.
    if account is None or not key.grants(mailbox_id):
        raise Problem("not-found", "no configured mailbox with that id for this API key")
    if not key.allows(mailbox_id, scope):
        raise Problem("forbidden", f"this API key does not grant {scope!r} on this mailbox")
    return account


def require_admin(request: web.Request, directory: Directory) -> ApiKey:
    """The API key of the request, which has the ``admin`` scope, or a :class:`Problem`."""
    token = _credentials(request, "Bearer")
    if not token:
        raise Problem(
            "unauthorized", "send an API key as 'Authorization: Bearer <key>'", _BEARER_CHALLENGE
        )
    key = directory.api_keys.authenticate(token)
    if key is None:
        raise Problem("unauthorized", "the API key is not valid", _BEARER_CHALLENGE)
    if "admin" not in key.scopes:
        raise Problem("forbidden", "this API key does not grant 'admin'")
    return key


def _passthrough(request: web.Request, directory: Directory, client: str | None) -> Account:
    if not directory.passthrough:
        raise Problem("forbidden", "passthrough logins are disabled on this gateway")
    token = _credentials(request, "XOAUTH2")
    if token is not None:
        # The caller's own OAuth access token: used for this request's login and never
        # kept (not even among recent accounts); another scheme than API keys' Bearer, so
        # an API key sent to `me` is never passed on to a mail server.
        return _token_passthrough(token, directory)
    presented = request.headers.get("Authorization")
    if presented is not None and len(presented) <= MAX_AUTH_HEADER:
        # The same header as a recent request that passed every check below.
        account = directory.recent.get(presented)
        if account is not None:
            return account
    account = dataclasses.replace(_checked_passthrough(request, directory), client=client)
    if presented is not None:
        directory.recent.put(presented, account)
    return account


def _checked_passthrough(request: web.Request, directory: Directory) -> Account:
    value = _credentials(request, "Basic")
    if value is None:
        raise Problem(
            "unauthorized",
            "send the POP3 user and password with HTTP Basic authentication",
            _BASIC_CHALLENGE,
        )
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Problem(
            "invalid-request", "the Basic credentials are not valid base64 UTF-8"
        ) from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise Problem("invalid-request", "the Basic credentials must be user:password")
    if _FORBIDDEN_CHARS.intersection(user) or _FORBIDDEN_CHARS.intersection(password):
        raise Problem("invalid-request", "the credentials contain CR, LF or NUL")
    if len(user) > 200 or len(password) > 1024:
        raise Problem("invalid-request", "the user name or password is too long")
    account = directory.passthrough_account(user, password)
    if account is None:
        # Not a credential problem (another password would not help): no challenge, so a
        # browser does not ask for one again.
        raise Problem(
            "no-mail-server",
            "no mail server is configured for this user's domain (no upstream for it, "
            "no preset, no default upstream)",
        )
    return account


def _token_passthrough(value: str, directory: Directory) -> Account:
    """``Authorization: XOAUTH2 <base64 of user=U^Aauth=Bearer T^A^A>``: the SASL XOAUTH2
    string that OAuth helper tools print, for the mailbox of U with U's own token."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise Problem(
            "invalid-request", "the XOAUTH2 credentials are not valid base64 ASCII"
        ) from None
    fields = dict(part.partition("=")[::2] for part in decoded.split("\x01") if part)
    user = fields.get("user", "")
    scheme, _, token = fields.get("auth", "").partition(" ")
    if not user or scheme.lower() != "bearer" or not token:
        raise Problem(
            "invalid-request",
            "the XOAUTH2 credentials must be base64 of user=<user>^Aauth=Bearer <token>^A^A",
        )
    if _FORBIDDEN_CHARS.intersection(user + token) or not token.isprintable() or " " in token:
        raise Problem("invalid-request", "the XOAUTH2 credentials contain forbidden characters")
    if len(user) > 200 or len(token) > 4096:
        raise Problem("invalid-request", "the user name or token is too long")
    account = directory.passthrough_account(user, token, method="xoauth2")
    if account is None:
        raise Problem(
            "no-mail-server",
            "no mail server is configured for this user's domain (no upstream for it, "
            "no preset, no default upstream)",
        )
    return account
