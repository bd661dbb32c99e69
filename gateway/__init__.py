"""pop3gw: any POP3 mailbox as HTTP/JSON."""

#: The one version: the package's (pyproject.toml reads it from here), ``pop3gw --version``,
#: and the OpenAPI contract's ``info.version`` (a test holds the two to it).
__version__ = "1.0.0"
