"""Check-digit algorithms for `input` nodes."""

from __future__ import annotations

_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"


def cn_resident_id_check_digit(first17: str) -> str:
    """GB 11643-1999 check character for the first 17 digits of an ID number."""
    total = sum(int(d) * w for d, w in zip(first17, _CN_WEIGHTS))
    return _CN_CHECK[total % 11]


def cn_resident_id_valid(value: str) -> bool:
    """18-character Chinese resident ID number with a valid check character."""
    value = value.upper()
    if len(value) != 18 or not value[:17].isdigit() or not (value[17].isdigit() or value[17] == "X"):
        return False
    return cn_resident_id_check_digit(value[:17]) == value[17]


def luhn_valid(value: str) -> bool:
    """Luhn (mod 10) check, as on bank cards and many account numbers."""
    if not value.isdigit() or len(value) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(value)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


CHECKSUMS = {"luhn": luhn_valid, "cn_resident_id": cn_resident_id_valid}
