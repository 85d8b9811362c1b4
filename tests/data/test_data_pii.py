"""PII detectors: true positives with masked previews, and the false positives we refuse."""

from __future__ import annotations

import random
import string

import pytest

from whetstone.data.pii import find_pii, iban_valid, luhn_valid, redact, shannon_entropy


def kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in find_pii(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mail john.doe@example.com now", [("EMAIL", "john.doe@example.com")]),
        ("a@b.co.uk, x_y+tag@sub.example.org", [("EMAIL", "a@b.co.uk"), ("EMAIL", "x_y+tag@sub.example.org")]),
        ("call +44 20 7946 0958 today", [("PHONE", "+44 20 7946 0958")]),
        ("call (555) 123-4567 or 555.123.4567", [("PHONE", "(555) 123-4567"), ("PHONE", "555.123.4567")]),
        ("visa 4111 1111 1111 1111.", [("CARD", "4111 1111 1111 1111")]),
        ("amex 378282246310005", [("CARD", "378282246310005")]),
        ("host 192.168.1.20:8080", [("IP", "192.168.1.20")]),
        ("v6 2001:db8::8a2e:370:7334 and fe80::1", [("IP", "2001:db8::8a2e:370:7334"), ("IP", "fe80::1")]),
        ("iban DE89 3704 0044 0532 0130 00 ok", [("IBAN", "DE89 3704 0044 0532 0130 00")]),
        ("iban GB82WEST12345698765432", [("IBAN", "GB82WEST12345698765432")]),
        ("key sk-proj-abcdefghijklmnopqrstuvwxyz123", [("SECRET", "sk-proj-abcdefghijklmnopqrstuvwxyz123")]),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", [("SECRET", "ghp_abcdefghijklmnopqrstuvwxyz0123456789")]),
        ("github_pat_11ABCDEFG0123456789_abcdefghij", [("SECRET", "github_pat_11ABCDEFG0123456789_abcdefghij")]),
        ("aws AKIAIOSFODNN7EXAMPLE", [("SECRET", "AKIAIOSFODNN7EXAMPLE")]),
        ("slack xoxb-123456789012-abcdef", [("SECRET", "xoxb-123456789012-abcdef")]),
        ("AIzaSyA1234567890abcdefghijklmnopqrstuv", [("SECRET", "AIzaSyA1234567890abcdefghijklmnopqrstuv")]),
        ("hf_abcdefghijklmnopqrstuvwxyzABCDEF", [("SECRET", "hf_abcdefghijklmnopqrstuvwxyzABCDEF")]),
        (
            "x -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIB\n-----END RSA PRIVATE KEY----- y",
            [("SECRET", "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIB\n-----END RSA PRIVATE KEY-----")],
        ),
        ("token aZ3kP9qL2mN8xR4tV7wY1bC5dF6gH0jK end", [("SECRET", "aZ3kP9qL2mN8xR4tV7wY1bC5dF6gH0jK")]),
    ],
)
def test_detects(text, expected):
    assert kinds(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "pip install torch==2.13.0.1 and numpy 1.2.3.4 and v10.20.30.40",  # version numbers
        "localhost 127.0.0.1, any 0.0.0.0, loopback ::1",
        "dates 2024-01-15 and 15.01.2024, ISBN 978-3-16-148410-0, time 12:30:45",
        "std::vector<int> and a::b in C++",
        "order id 1234567890123456 fails Luhn; timestamp 1700000000000",
        "git 3f786850e387550fdab836ed7c6dc6a6c1c1f3bd uuid 123e4567-e89b-12d3-a456-426614174000",
        "MyVeryLongFunctionNameForTesting123Value /home/user/projects/MyProject2024/src/main",
        "DE89370400440532013001 has a bad checksum",
        "the number 42 and 3.14159 and 10 000 000 people",
        "mention @username and email-like text like user@localhost",
    ],
)
def test_does_not_flag(text):
    assert kinds(text) == []


def test_previews_never_show_the_full_value():
    text = (
        "john.doe@example.com +44 20 7946 0958 4111 1111 1111 1111 192.168.1.20 "
        "DE89 3704 0044 0532 0130 00 ghp_abcdefghijklmnopqrstuvwxyz0123456789"
    )
    previews = [(f.kind, f.preview) for f in find_pii(text)]
    assert previews == [
        ("EMAIL", "jo***@***.com"),
        ("PHONE", "***58"),
        ("CARD", "**** 1111"),
        ("IP", "192.***.***.***"),
        ("IBAN", "DE89 **** 00"),
        ("SECRET", "ghp_*** (40 chars)"),
    ]
    for f in find_pii(text):
        assert text[f.start : f.end] not in f.preview


def test_redact_replaces_with_typed_placeholders_and_counts():
    text = "Mail a@b.com or c@d.org, card 4111-1111-1111-1111, ip 10.0.0.12, key hf_abcdefghijklmnopqrstuvwxyzABCDEF."
    redacted, counts = redact(text)
    assert redacted == "Mail [EMAIL] or [EMAIL], card [CARD], ip [IP], key [SECRET]."
    assert counts == {"EMAIL": 2, "CARD": 1, "IP": 1, "SECRET": 1}
    assert redact(redacted) == (redacted, {})


def test_all_single_digit_quads_are_read_as_versions():
    # A judgement call: "1.2.3.4" in code is far more often a version than an address.
    assert kinds("dns 8.8.4.4 and 10.0.0.12") == [("IP", "10.0.0.12")]


def test_a_phone_followed_by_a_card_yields_both():
    text = "+44 20 7946 0958 4111 1111 1111 1111"
    assert kinds(text) == [("PHONE", "+44 20 7946 0958"), ("CARD", "4111 1111 1111 1111")]


def test_overlapping_findings_keep_the_stronger_kind():
    # The digits of this key would also pass as a phone number on their own.
    assert kinds("sk-555-123-4567-abcdefghijklmnop") == [("SECRET", "sk-555-123-4567-abcdefghijklmnop")]


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    assert not iban_valid("DE8937040044053201300")  # one character short for Germany
    assert shannon_entropy("aaaa") == 0.0 and shannon_entropy("abcd") == 2.0


def test_most_random_tokens_are_flagged_and_words_are_not():
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits
    tokens = ["".join(rng.choice(alphabet) for _ in range(40)) for _ in range(200)]
    flagged = sum(bool(find_pii(f"value {t} end")) for t in tokens)
    assert flagged >= 190  # a few random tokens lack a digit or an upper-case letter
    prose = "The quick brown fox jumps over the lazy dog near the riverbank every morning at dawn. " * 20
    assert find_pii(prose) == []
