"""Bytes to text: charsets, RFC 2047 encoded words, control characters.

Everything here takes whatever a mail server hands over and returns a `str`; nothing raises.
Decoding rules, in order:

- a declared charset (MIME ``charset=`` or an encoded word's charset) is used when Python
  knows it and it decodes strictly; labels are mapped to the superset real mail uses
  (GB2312/GBK -> GB18030, Big5 -> Big5-HKSCS, Shift_JIS -> CP932, EUC-KR -> CP949,
  ISO-8859-1 -> Windows-1252 as browsers do);
- unlabelled bytes (raw 8-bit headers, ``us-ascii`` bodies that are not ASCII, unknown
  charsets) are tried as UTF-8, then GB18030 (when it decodes cleanly), then Latin-1, which
  never fails.
"""

from __future__ import annotations

import binascii
import codecs
import encodings
import encodings.aliases
import functools
import pkgutil
import re
from collections.abc import Iterable

__all__ = [
    "clean_body",
    "clean_header",
    "decode_declared",
    "decode_encoded_words",
    "decode_unlabelled",
    "header_fallback",
    "lookup_charset",
    "text_charset",
]

# -- charsets ------------------------------------------------------------------------------

# Labels whose real-world content is a superset of what the label promises.
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "cp936": "gb18030",
    "ms936": "gb18030",
    "936": "gb18030",
    "euc_cn": "gb18030",
    "euccn": "gb18030",
    "x_euc_cn": "gb18030",
    "x_gbk": "gb18030",
    "gb_2312_80": "gb18030",
    "gb_2312": "gb18030",
    "csgb2312": "gb18030",
    "chinese": "gb18030",
    "big5": "big5hkscs",
    "big5_tw": "big5hkscs",
    "x_big5": "big5hkscs",
    "cn_big5": "big5hkscs",
    "csbig5": "big5hkscs",
    "shift_jis": "cp932",
    "shift_jis_2004": "cp932",
    "sjis": "cp932",
    "s_jis": "cp932",
    "x_sjis": "cp932",
    "ms_kanji": "cp932",
    "csshiftjis": "cp932",
    "windows_31j": "cp932",
    "euc_kr": "cp949",
    "ks_c_5601_1987": "cp949",
    "ks_c_5601": "cp949",
    "ksc5601": "cp949",
    "iso_8859_1": "cp1252",
    "iso8859_1": "cp1252",
    "iso_8859_1_1987": "cp1252",
    "latin1": "cp1252",
    "latin_1": "cp1252",
    "l1": "cp1252",
    "iso_ir_100": "cp1252",
    "tis_620": "cp874",
    "iso_8859_11": "cp874",
    "windows_874": "cp874",
    "iso_8859_8_i": "iso8859_8",
    "iso_8859_6_i": "iso8859_6",
    "unicode_1_1_utf_7": "utf_7",
    "x_mac_roman": "mac_roman",
    "macintosh": "mac_roman",
}
# Labels that carry no information beyond "7-bit": treated as unlabelled.
_UNLABELLED = frozenset({"us_ascii", "ascii", "us", "ansi_x3_4_1968", "646", "iso646_us", ""})
# Codecs Python has that are not charsets a mail may declare (they transform text or bytes,
# or would accept anything and hide a bad label).
_NOT_CHARSETS = frozenset(
    {
        "unicode_escape",
        "raw_unicode_escape",
        "idna",
        "punycode",
        "undefined",
        "mbcs",
        "oem",
        "charmap",
        "palmos",
    }
)
# The names `codecs.lookup` may be asked about: a fixed set, so a hostile label never makes
# Python try to import a module or grow a cache.
_KNOWN = (
    frozenset(encodings.aliases.aliases)
    | frozenset(encodings.aliases.aliases.values())
    | frozenset(module.name for module in pkgutil.iter_modules(encodings.__path__))
    | frozenset(_SUPERSETS)
)
_PROBE = "Az09 .-=?:;@<>"


def _normalize_label(label: str) -> str:
    return encodings.normalize_encoding(label.strip().strip("\"'").lower()).replace(".", "_")


# The same supersets by Python's canonical codec name (reached through Python's aliases).
_CODEC_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "iso8859-1": "cp1252",
    "tis-620": "cp874",
}


@functools.lru_cache(maxsize=512)
def _codec_for(normalized: str) -> str | None:
    name = _SUPERSETS.get(normalized, normalized)
    try:
        info = codecs.lookup(name)
        if info.name == "ascii":
            return None
        if info.name in _CODEC_SUPERSETS:
            info = codecs.lookup(_CODEC_SUPERSETS[info.name])
        if info.name.replace("-", "_") in _NOT_CHARSETS:
            return None
        # Only ASCII-compatible text codecs (this also rules out bytes-to-bytes codecs and
        # UTF-16/32, which no header or 8-bit body can use).
        if _PROBE.encode("ascii").decode(info.name) != _PROBE:
            return None
    except (LookupError, ValueError, UnicodeError):
        return None
    return info.name


def lookup_charset(label: str | None) -> str | None:
    """The Python codec for a MIME charset label, or None if unknown or merely "ASCII"."""
    if not label or len(label) > 64:
        return None
    normalized = _normalize_label(label)
    if normalized in _UNLABELLED or normalized not in _KNOWN:
        return None
    return _codec_for(normalized)


#: a charset label as MIME writes it (RFC 2978's mime-charset), safe in a header
_CHARSET_LABEL = re.compile(r"[A-Za-z0-9!#$%&'+^_`{}~-]{1,40}")


def text_charset(label: str | None, data: bytes) -> str:
    """The charset to send a text part's bytes with: its declared ``label`` (lower-cased)
    when that names an encoding we know; else ``us-ascii`` (RFC 2046's default) when the
    bytes are ASCII, ``utf-8`` when they read as UTF-8, and ``unknown-8bit`` (RFC 1428)."""
    if label is not None and _CHARSET_LABEL.fullmatch(label) and lookup_charset(label):
        return label.lower()
    if data.isascii():
        return "us-ascii"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown-8bit"
    return "utf-8"


_PRIVATE_USE = re.compile("[\ue000-\uf8ff]")


def _try_gb18030(data: bytes) -> str | None:
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        return None
    # Private-use code points mean the bytes were not GB18030 text after all.
    return None if _PRIVATE_USE.search(text) else text


def decode_unlabelled(data: bytes) -> str:
    """Decode bytes of unknown charset: UTF-8, else GB18030 if clean, else Latin-1."""
    if data.isascii():
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = _try_gb18030(data)
    return text if text is not None else data.decode("latin-1")


def decode_declared(data: bytes, label: str | None) -> str:
    """Decode bytes labelled `label`; unknown labels and failures fall back gracefully."""
    codec = lookup_charset(label)
    if codec is None:
        return decode_unlabelled(data)
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        pass
    if codec != "utf-8":
        # The most common mislabel: UTF-8 text under a legacy label.
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec == "cp1252":  # a Latin-1 label over the five octets Windows-1252 leaves unused
        return data.decode("latin-1")
    return data.decode(codec, errors="replace")


def header_fallback(values: Iterable[bytes], hint: str | None) -> str:
    """The codec for a header block's raw 8-bit values that are not UTF-8.

    One choice per block: a message is written by one client in one charset. `hint` is the
    block's declared body charset; then GB18030; the first that decodes every such value
    wins, else Latin-1.
    """
    legacy = []
    for value in values:
        if value.isascii():
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            legacy.append(value)
    if not legacy:
        return "utf-8"
    candidates = []
    codec = lookup_charset(hint)
    if codec is not None and codec not in ("utf-8", "utf-7"):
        candidates.append(codec)
    candidates.append("gb18030")
    for candidate in candidates:
        try:
            texts = [value.decode(candidate) for value in legacy]
        except UnicodeDecodeError:
            continue
        if candidate == "gb18030" and any(_PRIVATE_USE.search(text) for text in texts):
            continue
        return candidate
    return "latin-1"


# -- RFC 2047 ------------------------------------------------------------------------------

# =?charset[*language]?B|Q?encoded-text?=  (printable ASCII only, no "?" in the text)
_ENCODED_WORD = re.compile(
    r"=\?([!-)+->@-~]+)(?:\*[!->@-~]*)?\?([BbQq])\?([!->@-~]*)\?=",
)
_B64_WORD = re.compile(r"[A-Za-z0-9+/]*=*")


def _word_payload(encoding: str, text: str) -> bytes | None:
    """The octets of an encoded word, or None when it is malformed (left as text)."""
    if encoding in "Bb":
        if not _B64_WORD.fullmatch(text):
            return None
        data = text.rstrip("=")
        if len(data) % 4 == 1:
            return None
        try:
            return binascii.a2b_base64(data + "=" * (-len(data) % 4))
        except binascii.Error:
            return None
    return binascii.a2b_qp(text.encode("ascii"), header=True)


def decode_encoded_words(text: str) -> str:
    """Decode RFC 2047 encoded words in `text`; malformed ones stay as they are.

    Whitespace between two encoded words is dropped, and adjacent words in the same charset
    are joined before decoding (senders split multi-byte characters across words).
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = bytearray()
    pending_charset = ""
    last_end = 0
    previous_was_word = False

    def flush() -> None:
        if pending:
            out.append(decode_declared(bytes(pending), pending_charset))
            pending.clear()

    for match in _ENCODED_WORD.finditer(text):
        payload = _word_payload(match.group(2), match.group(3))
        if payload is None:
            continue
        gap = text[last_end : match.start()]
        charset = match.group(1).lower()
        if not (previous_was_word and (not gap or gap.isspace())):
            flush()
            out.append(gap)
        elif charset != pending_charset:
            flush()
        pending_charset = charset
        pending += payload
        last_end = match.end()
        previous_was_word = True
    flush()
    out.append(text[last_end:])
    return "".join(out)


# -- control characters ----------------------------------------------------------------------

# C0, DEL, C1, lone surrogates, and the Unicode line/paragraph separators.
_HEADER_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_BODY_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def clean_header(text: str) -> str:
    """A header string without control characters (tabs become spaces), trimmed."""
    if not text.isprintable():
        text = _HEADER_CONTROLS.sub("", text.replace("\t", " "))
    return text.strip(" ")


def clean_body(text: str) -> str:
    """Body text with ``\\n`` line endings and no control characters except tab/newline."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _BODY_CONTROLS.sub("", text)
