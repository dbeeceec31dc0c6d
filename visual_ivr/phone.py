"""Caller numbers: mobile or not (phonenumbers), E.164 form, masked for trails."""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType

WITHHELD = frozenset({"", "anonymous", "unknown", "restricted", "private", "unavailable", "withheld"})
_MOBILE_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}


@dataclass(frozen=True)
class Line:
    """``kind``: mobile, landline, withheld, invalid or other (VoIP, toll-free ...)."""

    kind: str
    e164: str | None = None

    @property
    def is_mobile(self) -> bool:
        return self.kind == "mobile"


def classify(number: object, region: str = "CN") -> Line:
    """What kind of line ``number`` is, read with ``region`` as the default country."""
    text = str(number or "").strip()
    if text.lower() in WITHHELD:
        return Line("withheld")
    try:
        parsed = phonenumbers.parse(text, region.upper())
    except phonenumbers.NumberParseException:
        return Line("invalid")
    if not phonenumbers.is_valid_number(parsed):
        return Line("invalid")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    kind = phonenumbers.number_type(parsed)
    if kind in _MOBILE_TYPES:
        return Line("mobile", e164)
    if kind == PhoneNumberType.FIXED_LINE:
        return Line("landline", e164)
    return Line("other", e164)


def mask_number(number: str | None) -> str:
    """``+86138****8000``: enough to recognise, not enough to dial."""
    text = str(number or "")
    if len(text) <= 7:
        return "*" * len(text)
    return text[:-8] + "****" + text[-4:]
