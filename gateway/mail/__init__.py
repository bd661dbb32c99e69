"""Mail parsing for the gateway (standard library only): bytes in, decoded data out.

``summary`` reads header sections for listings (`summarize`, cached as
`HeaderSummary.to_json`); ``message`` reads whole messages (`parse_message`) and finds
attachments by their MIME part path (`find_attachment`). Nothing here raises on messy
input: problems become best-effort text plus named ``defects``.
"""

from ._text import text_charset
from .message import (
    MAX_NESTING_DEPTH,
    MAX_PARTS,
    Attachment,
    AttachmentInfo,
    ParsedMessage,
    find_attachment,
    parse_message,
)
from .summary import JSON_VERSION, Address, HeaderSummary, summarize

__all__ = [
    "JSON_VERSION",
    "MAX_NESTING_DEPTH",
    "MAX_PARTS",
    "Address",
    "Attachment",
    "AttachmentInfo",
    "HeaderSummary",
    "ParsedMessage",
    "find_attachment",
    "parse_message",
    "summarize",
    "text_charset",
]
