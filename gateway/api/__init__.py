"""The HTTP layer: thin handlers over :class:`gateway.service.MailboxService`, by resource
(``mailboxes``, ``messages``, ``operations``), wired by ``routes``."""
