"""coldstart.text: cleaning rules, stable content texts, content hash."""

from __future__ import annotations

import hashlib

import pytest

from coldstart.text import clean_text, content_hash, item_content_text, user_content_text


@pytest.mark.parametrize("raw", [
    "write to john.doe+news@example.co.uk today",
    "write to <JOHN@EXAMPLE.COM> today",
    "write to mailto:j_d@mail-server.example.org today",
])
def test_emails_removed(raw):
    out = clean_text(raw)
    assert "@" not in out
    assert out == "write to < > today" if "<" in raw else out == "write to today"


@pytest.mark.parametrize("raw", [
    "call +1 (555) 123-4567 now",
    "call +44 20 7946 0958 now",
    "call 06 12 34 56 78 now",
    "call 0612345678 now",
    "call 555-1234 now",
    "call (030) 123456 now",
    "call +4930123456 now",
])
def test_phones_removed(raw):
    assert clean_text(raw) == "call now"


@pytest.mark.parametrize("raw", [
    "released 2024-01-15 and 10/12/2023 at 12:30",
    "price $1,299.99 or 3.14159265",
    "sizes 36 38 40, id 1234567, version 1.2.3.4567",
    "room 101, 42 items, year 1999",
])
def test_numbers_that_are_not_phones_kept(raw):
    assert clean_text(raw) == raw


def test_whitespace_and_control_chars():
    assert clean_text("  a\tb\n\nc\x00d\u200be\u00a0f\x1b  ") == "a b cde f"
    assert clean_text("\t\n  ") == ""


def test_missing_values():
    assert clean_text(None) == ""
    assert clean_text(float("nan")) == ""
    assert clean_text("") == ""
    assert clean_text(42) == "42"


def test_unicode_kept_and_normalised():
    text = "中文标题 العربية Ελληνικά русский 👨\u200d👩\u200d👧 🎉"
    assert clean_text(text) == text  # ZWJ emoji sequences survive
    assert clean_text("cafe\u0301") == clean_text("caf\u00e9") == "caf\u00e9"  # NFC
    assert clean_text("bad \ud800 surrogate") == "bad surrogate"


def test_length_cap():
    assert len(clean_text("x" * 100_000, max_chars=2000)) == 2000
    words = clean_text("word " * 10_000, max_chars=1000)
    assert len(words) <= 1000 and words.endswith("word")  # cut at a word boundary
    assert clean_text("abc", max_chars=0) == ""
    with pytest.raises(ValueError):
        clean_text("abc", max_chars=-1)


def test_idempotent():
    raw = "  Héllo\tworld  me@x.org +1 555 123 4567 中文 😀 " + "long " * 1000
    once = clean_text(raw, 500)
    assert clean_text(once, 500) == once


def test_item_content_text_order_and_dedupe():
    text = item_content_text("  Red  Shoe ", ["shoes", "Shoes", " sale ", None, ""], "Nice shoe.\nMail me@x.com",
                             {"size": 42, "color": "red", "empty": None, "materials": ["leather", "rubber"]})
    assert text == "Red Shoe | tags: shoes, sale | Nice shoe. Mail | color: red; materials: leather, rubber; size: 42"
    # attribute order and container type do not matter; tag order does
    same = item_content_text("Red Shoe", ("shoes", "sale"), "Nice shoe. Mail",
                             [("materials", ["leather", "rubber"]), ("size", "42"), ("color", "red")])
    assert same == text
    assert item_content_text("Red Shoe", ["sale", "shoes"], "Nice shoe. Mail", {}) != text


def test_item_content_text_missing_parts():
    assert item_content_text(None, None, None, None) == ""
    assert item_content_text("", [], "  ", {}) == ""
    assert item_content_text(None, "a, b,a", None, None) == "tags: a, b"
    assert item_content_text("T", None, "D", None) == "T | D"


def test_user_content_text():
    profile = {"country": "DE", "age": 33, "interests": ["jazz", "hiking"], "email": "a@b.com", "bio": None}
    assert user_content_text(profile) == "age: 33; country: DE; interests: jazz, hiking"
    assert user_content_text(dict(reversed(list(profile.items())))) == user_content_text(profile)
    assert user_content_text(None) == "" and user_content_text({}) == ""


def test_content_texts_are_clean():
    text = item_content_text("T\u0301 +1 555 123 4567", ["a\tb"], "x" * 5000, {"k\n": "v  w"})
    assert clean_text(text, max_chars=len(text)) == text


def test_content_hash():
    assert content_hash("") == hashlib.sha256(b"").hexdigest()
    assert content_hash("héllo 中文") == hashlib.sha256("héllo 中文".encode()).hexdigest()
    assert content_hash("a") != content_hash("a ")
    assert content_hash(None) == content_hash("")
