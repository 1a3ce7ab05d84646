"""Stable content text for items and users (used by ingest, to hash, and by embed, to encode).

Everything here is pure Python (``re``, ``unicodedata``, ``hashlib``) so that ingest can import it
without pulling torch in. The rules, in order, applied by :func:`clean_text`:

1. ``None`` (or a float NaN, as pandas gives for a missing value) is the empty text;
2. Unicode NFC normalisation, so the same text composed differently hashes the same;
3. control and format characters are dropped (tabs and newlines become spaces; the zero-width
   joiners that emoji sequences and some scripts need are kept), lone surrogates too;
4. e-mail addresses and phone numbers are removed (they identify people, not content, and
   removing them keeps the hash stable when only a contact detail changes);
5. every run of whitespace becomes one space, and the ends are stripped;
6. the text is cut to ``max_chars`` characters (at a word boundary when one is near).

:func:`item_content_text` and :func:`user_content_text` build one deterministic text from an
entity's parts; :func:`content_hash` is the sha256 of that text, so an entity is re-embedded
exactly when its text changes. ``clean_text`` is idempotent and the content texts are fixed points
of it, so the encoder may clean them again without changing them.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["clean_text", "item_content_text", "user_content_text", "content_hash", "DEFAULT_MAX_CHARS"]

DEFAULT_MAX_CHARS = 2000

# local@domain.tld (also inside "mailto:" and angle brackets)
_EMAIL = re.compile(r"(?:mailto:)?[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}", re.UNICODE)
# A phone-looking run: optional +country, digits in groups split by one space, dot, dash or slash,
# optional (area). Whether it *is* a phone is decided by _phone_or_keep (digit count, not a date).
_PHONE = re.compile(
    r"(?<![\w.,/+-])"
    r"(?:\+\s?\d{1,3}[\s.-]?)?"
    r"(?:\(\d{1,5}\)[\s.-]?)?"
    r"(?:\d{7,15}|\d{1,6}(?:[\s./-]\d{1,6}){0,5})"
    r"(?![\w,/-]|\.\d)"
)
_DATE = re.compile(r"\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")
_LOCAL_PHONE = re.compile(r"\d{3}[.-]\d{4}")
_SPACE = re.compile(r"\s+")
# kept although they are format (Cf) characters: ZWNJ, ZWJ (emoji sequences, Indic and Persian text)
_KEEP_FORMAT = {"\u200c", "\u200d"}


def _phone_or_keep(match: re.Match) -> str:
    """" " for a phone number, else the match unchanged.

    A phone has 7-15 digits and either a marker (a leading "+" or an "(area)"), or at least 9
    digits, or the local 555-1234 shape. Dates, years, prices, short ids and sizes are kept.
    """
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    if digits < 7 or digits > 15:
        return text
    if not (text.startswith("+") or "(" in text):
        if _DATE.fullmatch(text):
            return text
        if digits < 9 and not _LOCAL_PHONE.fullmatch(text):
            return text
    return " "


def _drop_controls(text: str) -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            out.append(" " if ch in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85" else "")
        elif cat == "Cf":
            out.append(ch if ch in _KEEP_FORMAT else "")
        elif cat == "Cs":  # lone surrogate: not encodable, never meaningful
            out.append("")
        else:
            out.append(ch)
    return "".join(out)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def clean_text(text: str | None, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The text as the encoder and the content hash see it (see the module doc for the rules).

    ``max_chars`` caps the result; 0 gives "". Non-string values are converted with ``str``.
    """
    if max_chars < 0:
        raise ValueError(f"max_chars must not be negative, got {max_chars}")
    if _is_missing(text) or max_chars == 0:
        return ""
    if not isinstance(text, str):
        text = str(text)
    # Bound the work on huge inputs: only a prefix can reach the result. Taken generously so
    # that the removals below rarely make the result shorter than max_chars.
    limit = max(4 * max_chars, max_chars + 1000)
    if len(text) > limit:
        text = text[:limit]
    text = unicodedata.normalize("NFC", text)
    if not text.isascii() or not text.isprintable():
        text = _drop_controls(text)
    if "@" in text:
        text = _EMAIL.sub(" ", text)
    if any(ch.isdigit() for ch in text):
        text = _PHONE.sub(_phone_or_keep, text)
    text = _SPACE.sub(" ", text).strip()
    if len(text) > max_chars:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        if space >= max_chars * 0.8:  # cut at a word boundary if one is near the end
            cut = cut[:space]
        text = cut.rstrip()
    return text


def _as_list(values: Any) -> list:
    if _is_missing(values):
        return []
    if isinstance(values, str):
        return values.split(",")
    if isinstance(values, Mapping):
        return list(values.keys())
    try:
        return list(values)
    except TypeError:
        return [values]


def _value_text(value: Any, max_chars: int) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return _pairs_text(value, max_chars)
    if not isinstance(value, str) and isinstance(value, Iterable):
        parts = [_value_text(v, max_chars) for v in value]
        return clean_text(", ".join(p for p in parts if p), max_chars)
    return clean_text(value, max_chars)


def _pairs_text(pairs: Any, max_chars: int) -> str:
    """``key: value`` parts sorted by key, joined with "; " (missing or empty values skipped)."""
    if _is_missing(pairs):
        return ""
    items = pairs.items() if isinstance(pairs, Mapping) else list(pairs)
    cleaned = []
    for key, value in items:
        k = clean_text(key, max_chars)
        v = _value_text(value, max_chars)
        if k and v:
            cleaned.append((k, v))
    cleaned.sort()
    return "; ".join(f"{k}: {v}" for k, v in cleaned)


def item_content_text(title: Any = None, tags: Any = None, description: Any = None, attributes: Any = None,
                      *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """One deterministic text for an item: ``title | tags: a, b | description | k1: v1; k2: v2``.

    Each part is cleaned and capped at ``max_chars``; missing or empty parts are skipped; "" when
    nothing is left. Tags keep their given order (a string is split on commas) and are
    de-duplicated case-insensitively; attributes (a mapping or ``(key, value)`` pairs, as Spark
    map columns arrive) are sorted by key.
    """
    parts = []
    t = clean_text(title, max_chars)
    if t:
        parts.append(t)
    seen: set[str] = set()
    tag_list = []
    for tag in _as_list(tags):
        c = clean_text(tag, max_chars)
        if c and c.casefold() not in seen:
            seen.add(c.casefold())
            tag_list.append(c)
    if tag_list:
        parts.append("tags: " + ", ".join(tag_list))
    d = clean_text(description, max_chars)
    if d:
        parts.append(d)
    a = _pairs_text(attributes, max_chars)
    if a:
        parts.append(a)
    return " | ".join(parts)


def user_content_text(profile: Any, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """One deterministic text for a user profile: ``k1: v1; k2: v2`` sorted by key ("" if none)."""
    return _pairs_text(profile, max_chars)


def content_hash(text: str | None) -> str:
    """sha256 hex digest of the UTF-8 text ("" for ``None``); changes exactly when the text does."""
    return hashlib.sha256(("" if text is None else text).encode("utf-8", "surrogatepass")).hexdigest()
