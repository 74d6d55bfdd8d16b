"""Personal data scrubbing: e-mail addresses, phone numbers, IBANs, card numbers, IP addresses.

Each match is replaced by a placeholder (``<EMAIL>``...) and counted per kind. Patterns are
conservative where a false positive would destroy useful content: a card number must pass the Luhn
check (ISO/IEC 7812-1), an IBAN the ISO 13616 mod-97 check, an IP address must parse with Python's
``ipaddress``; a phone number needs a leading ``+``, a trunk ``0`` or the North-American
``(555) 123-4567`` shape with separators, so a bare job id such as ``12345678`` is left alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from affinage.curation.base import Step
from affinage.curation.record import Record
from affinage.errors import ConfigError

PiiKind = Literal["email", "iban", "card", "phone", "ipv4", "ipv6"]
ALL_KINDS: tuple[str, ...] = ("email", "iban", "card", "phone", "ipv4", "ipv6")
"""Also the order of replacement: an IBAN's digits must not be taken for a card or a phone number."""

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "iban": "<IBAN>",
    "card": "<CARD_NUMBER>",
    "phone": "<PHONE>",
    "ipv4": "<IP_ADDRESS>",
    "ipv6": "<IP_ADDRESS>",
}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])")
_CARD = re.compile(r"(?<![\d-])[2-6]\d{3}(?:[ -]?\d{2,7}){2,4}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(0\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,5}"  # +33 6 12 34 56 78, +49 (0)30 1234567
    r"|0\d(?:[ .-]?\d{2}){4}"  # 06 12 34 56 78 (France, 10 digits)
    r"|0\d{1,4}[ /.-]\d{3,8}(?:[ .-]\d{2,5})?"  # 030 1234567, 020-555 1234 (trunk-0 area codes)
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}"  # (555) 123-4567, 555-123-4567
    r")(?![\w])"
)
_DIGIT = re.compile(r"\d")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def luhn_valid(digits: str) -> bool:
    """Luhn check: double every second digit from the right, subtract 9 above 9; the sum is divisible by 10.

    ``4539 1488 0343 6467`` -> True (a test Visa number); changing any one digit -> False.
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35; the number mod 97 is 1."""
    iban = iban.replace(" ", "")
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


# A validator returns how many characters of the match are personal data (0: none of it).


def _email(text: str) -> int:
    return len(text)


def _iban(text: str) -> int:
    # The pattern may run on into a following word in capitals ("... 189 CODE"): try shorter prefixes.
    while len(text.replace(" ", "")) >= 15:
        if iban_valid(text):
            return len(text)
        text = text[: text.rfind(" ")] if " " in text else text[:-1]
    return 0


def _card(text: str) -> int:
    digits = re.sub(r"\D", "", text)
    return len(text) if 13 <= len(digits) <= 19 and luhn_valid(digits) else 0


def _phone(text: str) -> int:
    digits = re.sub(r"\D", "", text)
    return len(text) if 8 <= len(digits) <= 15 else 0


def _ipv4(text: str) -> int:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return 0
    return len(text)


def _ipv6(text: str) -> int:
    if not any(c.isdigit() for c in text):
        return 0  # C++ "a::b" or "dead::beef" is more likely code than an address
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return 0
    return len(text)


_DETECTORS: dict[str, tuple[re.Pattern[str], Callable[[str], int]]] = {
    "email": (_EMAIL, _email),
    "iban": (_IBAN, _iban),
    "card": (_CARD, _card),
    "phone": (_PHONE, _phone),
    "ipv4": (_IPV4, _ipv4),
    "ipv6": (_IPV6, _ipv6),
}


@dataclass
class PiiOptions:
    kinds: list[PiiKind] = field(default_factory=lambda: list(ALL_KINDS))
    placeholders: dict[str, str] = field(default_factory=dict)
    """Override placeholders per kind, e.g. ``{email: "[email]"}``."""
    keep: list[str] = field(default_factory=list)
    """Exact strings never replaced: public addresses such as the helpdesk's own ``support@example.org``."""
    roles: list[Literal["system", "user", "assistant"]] = field(
        default_factory=lambda: ["system", "user", "assistant"]
    )


class PiiStep(Step):
    name = "pii"

    def __init__(self, options: PiiOptions, context) -> None:
        super().__init__(options, context)
        unknown = sorted(set(options.placeholders) - set(ALL_KINDS))
        if unknown:
            raise ConfigError(f"pii step: placeholders for unknown kind(s) {unknown}; kinds: {', '.join(ALL_KINDS)}")
        self.scrubber = Scrubber(options.kinds, {**PLACEHOLDERS, **options.placeholders}, set(options.keep))
        self.roles = frozenset(options.roles)
        self.rows_changed = 0

    def __call__(self, record: Record) -> str | None:
        found: dict[str, int] = {}

        def scrub(text: str) -> str:
            new, counts = self.scrubber.scrub(text)
            for kind, n in counts.items():
                found[kind] = found.get(kind, 0) + n
            return new

        if record.map_contents(scrub, self.roles):
            self.rows_changed += 1
        self.changes.update(found)
        return None

    def details(self) -> dict:
        return {"rows changed": self.rows_changed}


class Scrubber:
    """Replaces personal data in text; ``scrub(text) -> (new_text, {kind: count})``."""

    def __init__(self, kinds, placeholders: dict[str, str], keep: set[str]) -> None:
        order = [k for k in ALL_KINDS if k in set(kinds)]
        self.detectors = [(k, *_DETECTORS[k], placeholders[k]) for k in order]
        self.keep = keep

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        has_digit = _DIGIT.search(text) is not None
        for kind, pattern, valid, placeholder in self.detectors:
            # Cheap tests first: most texts hold no '@', and every other kind needs a digit.
            if (kind == "email" and "@" not in text) or (kind != "email" and not has_digit):
                continue
            if (kind == "ipv4" and "." not in text) or (kind == "ipv6" and ":" not in text):
                continue

            def replace(match: re.Match[str], kind=kind, valid=valid, placeholder=placeholder) -> str:
                found = match.group(0)
                n = 0 if found in self.keep else valid(found)
                if n == 0:
                    return found
                counts[kind] = counts.get(kind, 0) + 1
                return placeholder + found[n:]

            text = pattern.sub(replace, text)
        return text, counts
