"""The fault matrix (see README.md here): end to end through HTTP, each fault with its
answer, and a check that no message was lost or deleted by mistake."""
