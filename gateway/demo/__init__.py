"""A built-in POP3 server with a demo mailbox (standard library only).

``pop3gw demo`` runs the gateway against it, so the HTTP API can be tried without a mail
account: ``DemoPOP3Server`` serves ``demo_messages()`` to user ``demo``, password ``demo``.
"""

from .messages import demo_messages
from .server import DemoPOP3Server

__all__ = ["DemoPOP3Server", "demo_messages"]
