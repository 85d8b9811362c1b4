"""Detect and redact personal data and secrets in text.

Kinds and their placeholders: EMAIL, PHONE, CARD, IP, IBAN, SECRET. A finding
carries its kind, its span and a masked preview that never shows the whole
value ("jo***@***.com"), so reports can point at PII without repeating it.

Precision over recall: a false positive in a training set costs a redacted
example, but a noisy report gets ignored. The judgement calls:

- PHONE needs a leading "+country" code, or the North American shape
  "(555) 123-4567" / "555-123-4567"; bare digit runs are IDs as often as phones.
- CARD needs 13-19 digits (optionally grouped by spaces or dashes), a known
  issuer prefix, and a valid Luhn checksum.
- IP: dotted quads whose four parts are all single digits ("1.2.3.4") are read
  as version numbers, and so are quads right after "v" or "version"; loopback,
  unspecified and broadcast addresses are not personal data and are skipped.
  IPv6 needs two colons and at least five hex digits, and must parse.
- IBAN needs a known country, that country's length, and mod-97 == 1.
- SECRET: well-known key prefixes (sk-, ghp_, github_pat_, AKIA, xoxb-, AIza,
  hf_, PEM private keys), plus tokens of 32+ characters that mix upper case,
  lower case and digits and have high Shannon entropy. Hex digests (git SHAs,
  checksums) are all one case and so are not flagged.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass

PLACEHOLDERS = {
    "EMAIL": "[EMAIL]",
    "PHONE": "[PHONE]",
    "CARD": "[CARD]",
    "IP": "[IP]",
    "IBAN": "[IBAN]",
    "SECRET": "[SECRET]",
}
KINDS = tuple(PLACEHOLDERS)

# Bits per character a 32-character mixed token needs to count as a secret. The
# bar rises with length, since longer random strings score higher: random
# base62 scores a median 4.54 at 32 chars and 4.77 at 40, while long camelCase
# identifiers ("MyVeryLongFunctionNameForTesting123Value": 4.35) stay lower.
ENTROPY_THRESHOLD = 4.3


def entropy_threshold(length: int) -> float:
    return min(4.8, ENTROPY_THRESHOLD + 0.02 * (length - 32))


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    start: int
    end: int
    preview: str  # masked: never the full value


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![\w-])")
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}([ .-])\d{3}\1\d{4}"  # 555-123-4567, same separator twice
    r")(?![\w-]|\.\d)"
)
# A zero-width search with a capturing lookahead, so that candidates may overlap:
# in "0958 4111 1111 1111 1111" the card starts at the second group.
_CARD = re.compile(
    r"(?<![\w-])(?=(\d{13,19}|\d{4}([ -])\d{4}\2\d{4}\2\d{1,4}(?:\2\d{1,3})??|\d{4}([ -])\d{6}\3\d{4,5})(?![\w-]))"
)
_PHONE_LAST_GROUP = re.compile(r"[ .-]?\(?\d{1,4}\)?$")
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"
)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:.])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])")
_SECRET_PREFIXED = re.compile(
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----(?:.|\n)*?(?:-----END (?:[A-Z]+ )*PRIVATE KEY-----|\Z)"
    r"|(?<![\w-])(?:"
    r"sk-[A-Za-z0-9_-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[bpoars]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|hf_[A-Za-z0-9]{30,}"
    r")(?![\w-])"
)
# No lookarounds: a greedy run of the class is already maximal, and lookbehinds
# stop `re` from skipping ahead quickly (this one runs on every text).
_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{32,}")
_SECRET_HINT = re.compile(r"sk-|gh[pousr]_|github_pat_|A(?:KIA|SIA|Iza)|xox[bpoars]-|hf_|-----BEGIN")
_DIGITS = str.maketrans("", "", "0123456789")
_NUMBERISH = re.compile(r"\d[\d ().-]{5,}\d")
_IBAN_HINT = re.compile(r"[A-Z][A-Z]\d\d")
_VERSION_CONTEXT = re.compile(r"(?:\bv|version\s*|[=<>~]=\s*)$", re.IGNORECASE)

# IBAN lengths by country (ISO 13616 registry).
_IBAN_LENGTHS = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BR": 29,
    "BY": 28,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IQ": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LC": 32,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NL": 18,
    "NO": 15,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "SA": 24,
    "SC": 31,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "ST": 25,
    "SV": 28,
    "TL": 23,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VA": 22,
    "VG": 24,
    "XK": 20,
}
# Issuer prefixes of the major card networks (Visa, Mastercard, Amex, Discover,
# JCB, Diners, UnionPay, Maestro): a Luhn check alone passes 1 random number in 10.
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|6011|65|64[4-9]|35|30[0-5]|36|38|62|50|5[6-8]|6[37])")

# Earlier kinds win when spans overlap: a key is not also an IBAN, a card is not a phone.
_PRIORITY = {"SECRET": 0, "EMAIL": 1, "CARD": 2, "IBAN": 3, "IP": 4, "PHONE": 5}


def find_pii(text: str) -> list[Finding]:
    """Every finding in ``text``, in order, with no two overlapping.

    Each detector runs only when a cheap test shows it could match: most
    training text has no "@", few digits and no key prefix, and checking a
    million records should not cost a million runs of every pattern.
    """
    found: list[Finding] = []
    if "@" in text:
        found += [_finding("EMAIL", m, _mask_email(m.group())) for m in _EMAIL.finditer(text)]
    digits = len(text) - len(text.translate(_DIGITS))
    found += _secrets(text, digits)
    if digits >= 4:
        found += _numbers(text, digits)
    if "::" in text or text.count(":") >= 7:
        found += _ipv6(text)
    return _without_overlaps(found) if len(found) > 1 else found


def redact(text: str) -> tuple[str, Counter[str]]:
    """``text`` with every finding replaced by its placeholder, and counts by kind."""
    findings = find_pii(text)
    if not findings:
        return text, Counter()
    pieces, last = [], 0
    for f in findings:
        pieces += [text[last : f.start], PLACEHOLDERS[f.kind]]
        last = f.end
    pieces.append(text[last:])
    return "".join(pieces), Counter(f.kind for f in findings)


def shannon_entropy(token: str) -> float:
    """Bits per character of ``token``'s character distribution."""
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Country length and the ISO 7064 mod-97 check."""
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _finding(kind: str, match: re.Match, preview: str) -> Finding:
    return Finding(kind, match.start(), match.end(), preview)


def _secrets(text: str, digits: int) -> list[Finding]:
    found = []
    if _SECRET_HINT.search(text):
        found += [_finding("SECRET", m, _mask_secret(m.group())) for m in _SECRET_PREFIXED.finditer(text)]
    if not digits:  # an unprefixed key mixes digits and letters; the scan below costs more than the rest
        return found
    for m in _TOKEN.finditer(text):
        token = m.group()
        if (
            any(c.isdigit() for c in token)
            and any(c.isupper() for c in token)
            and any(c.islower() for c in token)
            and token.count("/") <= 2  # paths and URLs are slash-separated words
            and shannon_entropy(token) >= entropy_threshold(len(token))
        ):
            found.append(_finding("SECRET", m, _mask_secret(token)))
    return found


def _numbers(text: str, digits: int) -> list[Finding]:
    """Cards, IBANs, IPv4 addresses and phones.

    The strict patterns run only around "number-ish" runs (digits with spaces,
    dots, dashes or parentheses), found by one fast scan; the window keeps two
    characters either side so the patterns' boundary checks still see context.
    """
    found: list[Finding] = []
    if digits >= 8 and _IBAN_HINT.search(text):
        for m in _IBAN.finditer(text):
            compact = m.group().replace(" ", "")
            if iban_valid(compact):
                found.append(_finding("IBAN", m, compact[:4] + " **** " + compact[-2:]))
    for run in _NUMBERISH.finditer(text):
        start, end = max(0, run.start() - 2), min(len(text), run.end() + 2)
        count = len(run.group()) - len(run.group().translate(_DIGITS))
        if count >= 13:
            for m in _CARD.finditer(text, start, end):
                number = re.sub(r"[ -]", "", m.group(1))
                if _CARD_PREFIX.match(number) and len(set(number)) > 1 and luhn_valid(number):
                    found.append(Finding("CARD", m.start(1), m.end(1), "**** " + number[-4:]))
        if count >= 8:
            found += _phones(text, start, end)
        if "." in run.group():
            for m in _IPV4.finditer(text, start, end):
                parts = m.group().split(".")
                if all(len(p) == 1 for p in parts) or _VERSION_CONTEXT.search(text, max(0, m.start() - 12), m.start()):
                    continue  # "1.2.3.4", "v2.10.0.1": version numbers, not addresses
                address = ipaddress.IPv4Address(m.group())
                if address.is_loopback or address.is_unspecified or m.group() == "255.255.255.255":
                    continue
                found.append(_finding("IP", m, parts[0] + ".***.***.***"))
    return found


def _phones(text: str, start: int, end: int) -> list[Finding]:
    found = []
    for m in _PHONE.finditer(text, start, end):
        value = m.group()
        if value.startswith("+"):
            # The international pattern is greedy; digits that follow a phone
            # (a card, a second number) are trimmed back off, group by group.
            while sum(c.isdigit() for c in value) > 15 and value.count(" ") + value.count("-") + value.count(".") > 2:
                value = _PHONE_LAST_GROUP.sub("", value)
        n = sum(c.isdigit() for c in value)
        if 10 <= n <= 15 or (value.startswith("+") and 8 <= n <= 15):
            found.append(Finding("PHONE", m.start(), m.start() + len(value), "***" + value[-2:]))
    return found


def _ipv6(text: str) -> list[Finding]:
    found = []
    for m in _IPV6.finditer(text):
        candidate = m.group()
        if candidate.count(":") < 2 or sum(c not in ":" for c in candidate) < 5:
            continue
        try:
            address = ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        if address.is_loopback or address.is_unspecified:
            continue
        found.append(_finding("IP", m, candidate.split(":")[0] + ":***"))
    return found


def _without_overlaps(found: list[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (_PRIORITY[f.kind], f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def _mask_email(value: str) -> str:
    local, _, domain = value.partition("@")
    tld = domain.rsplit(".", 1)[-1]
    return f"{local[:2]}***@***.{tld}"


def _mask_secret(value: str) -> str:
    if value.startswith("-----BEGIN"):
        return "-----BEGIN ***PRIVATE KEY----- (redacted)"
    prefix = re.match(r"(sk-|gh[pousr]_|github_pat_|AKIA|ASIA|xox[bpoars]-|AIza|hf_)", value)
    shown = prefix.group() if prefix else value[:2]
    return f"{shown}*** ({len(value)} chars)"
