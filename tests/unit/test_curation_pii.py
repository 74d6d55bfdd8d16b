"""PII scrubbing: placeholders and counts per kind; checksums reject look-alikes."""

from __future__ import annotations

from affinage.curation.base import StepContext
from affinage.curation.lengths import LengthMeter
from affinage.curation.pii import PLACEHOLDERS, PiiOptions, PiiStep, Scrubber, iban_valid, luhn_valid
from affinage.curation.record import Record


def scrub(text: str, **kw):
    scrubber = Scrubber(kw.get("kinds", list(PLACEHOLDERS)), dict(PLACEHOLDERS), set(kw.get("keep", [])))
    return scrubber.scrub(text)


def test_luhn_by_value():
    # 4539 1488 0343 6467: doubling every second digit from the right gives a sum of 80 (divisible by 10).
    assert luhn_valid("4539148803436467")
    assert not luhn_valid("4539148803436468")  # last digit changed: sum 81
    assert luhn_valid("79927398713")  # the classic worked example (sum 70)


def test_iban_checksum():
    assert iban_valid("FR76 3000 6000 0112 3456 7890 189")
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("DE89370400440532013001")


def test_every_kind_replaced_and_counted():
    text = (
        "Mail anna.schmidt@uni-example.de or bob@example.org, call +49 30 1234 5678 or 06 12 34 56 78 "
        "or (555) 123-4567. IBAN FR76 3000 6000 0112 3456 7890 189, card 4539 1488 0343 6467, "
        "hosts 192.168.10.42 and 2001:db8:85a3::8a2e:370:7334."
    )
    new, counts = scrub(text)
    assert counts == {"email": 2, "phone": 3, "iban": 1, "card": 1, "ipv4": 1, "ipv6": 1}
    assert new == (
        "Mail <EMAIL> or <EMAIL>, call <PHONE> or <PHONE> or <PHONE>. IBAN <IBAN>, card <CARD_NUMBER>, "
        "hosts <IP_ADDRESS> and <IP_ADDRESS>."
    )


def test_look_alikes_are_left_alone():
    text = (
        "Reference 4539148803436468 fails Luhn; job 12345678 is not a phone; version 3.11.7 and "
        "999.1.2.3 are not addresses; std::vector is code; at 12:30:45 the job started; 2024-01-15."
    )
    new, counts = scrub(text)
    assert counts == {}
    assert new == text


def test_iban_followed_by_capital_word():
    new, counts = scrub("Send to FR76 3000 6000 0112 3456 7890 189 THANKS")
    assert counts == {"iban": 1}
    assert new == "Send to <IBAN> THANKS"


def test_keep_list_and_roles(tmp_path):
    step = PiiStep(
        PiiOptions(keep=["support@calcul-alpin.fr"], roles=["user"]), StepContext(tmp_path, LengthMeter())
    )
    record = Record("s", "f, row 1", [
        {"role": "user", "content": "I am jo@example.org, write to support@calcul-alpin.fr"},
        {"role": "assistant", "content": "Write to ops@example.org"},
    ])
    assert step(record) is None
    assert record.messages[0]["content"] == "I am <EMAIL>, write to support@calcul-alpin.fr"
    assert record.messages[1]["content"] == "Write to ops@example.org"  # assistant turns not scrubbed here
    assert step.changes == {"email": 1}
