"""OAuth2 access tokens for configured mailboxes: obtained and refreshed by the gateway
itself (no sidecar), before they expire, one refresh at a time per mailbox.

- :mod:`.tokens`: the lifecycle (:class:`~.tokens.TokenSource`): cache, refresh margin,
  single flight, backoff when the token endpoint fails, ``needs-reauth`` after
  ``invalid_grant``, rotated refresh tokens persisted.
- :mod:`.shared`: sharing across replicas in Redis (sealed entries, one refresh at a time).
- :mod:`.http`: the HTTP client that talks to token endpoints (aiohttp; wired by the app
  factory only, so that nothing below the API layer imports aiohttp).

Nothing here imports the rest of the gateway except :mod:`gateway.redis`.
"""
