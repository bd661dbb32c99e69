"""The fault matrix reuses the API fixtures (a gateway in front of a scriptable server)."""

from tests.api.conftest import fake_api, fake_server

__all__ = ["fake_api", "fake_server"]
