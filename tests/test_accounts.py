"""Keyed digests of accounts: the standard HMAC-SHA256, whatever the key length."""

from __future__ import annotations

import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounts import hmac_sha256


@settings(max_examples=300)
@given(key=st.binary(max_size=200), message=st.binary(max_size=300))
def test_hmac_sha256_is_the_standard_hmac(key: bytes, message: bytes) -> None:
    assert hmac_sha256(key, message) == hmac.digest(key, message, "sha256")
    # The prepared states are copied per call, never consumed.
    assert hmac_sha256(key, message) == hmac.digest(key, message, "sha256")
