"""The POP3 server we own (standard library only), and the demo mailbox it serves.

``pop3gw demo`` runs the gateway against it, so the HTTP API can be tried without a mail
account: ``DemoPOP3Server`` serves ``demo_messages()`` to user ``demo``, password ``demo``.
``POP3Server`` is the same server, configurable, with hooks that the test suite's
fault-injecting fake builds on.
"""

from .mailbox import Mailbox, Message
from .messages import demo_messages
from .server import DemoPOP3Server, POP3Server
from .session import Answer, ConnectionRecord, Session, Then, Wording

__all__ = [
    "Answer",
    "ConnectionRecord",
    "DemoPOP3Server",
    "Mailbox",
    "Message",
    "POP3Server",
    "Session",
    "Then",
    "Wording",
    "demo_messages",
]
