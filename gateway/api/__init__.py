"""The HTTP layer: thin handlers over :class:`gateway.service.MailboxService`."""
