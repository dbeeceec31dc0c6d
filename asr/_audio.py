"""Small PCM helpers shared by the recognizer and the audio sources.

``audioop`` is part of the standard library up to Python 3.12 (deprecated since
3.11) and is provided by the ``audioop-lts`` package from 3.13 on; the import
is wrapped so the deprecation warning does not leak into callers' logs.
"""

from __future__ import annotations

import math
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["SAMPLE_WIDTH", "audioop", "bytes_to_ms", "dbfs", "frame_bytes", "ms_to_bytes", "rms"]

#: Bytes per sample of signed 16-bit linear PCM ("slin").
SAMPLE_WIDTH = 2


def frame_bytes(sample_rate: int, frame_ms: int = 20) -> int:
    """Size in bytes of one ``frame_ms`` frame of mono s16le at ``sample_rate``."""
    return sample_rate * frame_ms // 1000 * SAMPLE_WIDTH


def ms_to_bytes(ms: float, sample_rate: int) -> int:
    """Byte count of ``ms`` milliseconds of mono s16le audio (whole samples)."""
    return int(sample_rate * ms / 1000) * SAMPLE_WIDTH


def bytes_to_ms(n: int, sample_rate: int) -> float:
    """Duration in milliseconds of ``n`` bytes of mono s16le audio."""
    return n / SAMPLE_WIDTH * 1000 / sample_rate


def rms(pcm: bytes) -> int:
    """Root mean square amplitude of s16le PCM (0 … 32767)."""
    if len(pcm) < SAMPLE_WIDTH:
        return 0
    if len(pcm) % SAMPLE_WIDTH:
        pcm = pcm[: len(pcm) - len(pcm) % SAMPLE_WIDTH]
    return int(audioop.rms(pcm, SAMPLE_WIDTH))


def dbfs(level: int) -> float:
    """Convert an RMS amplitude to dBFS (``-inf`` for digital silence)."""
    if level <= 0:
        return -math.inf
    return 20 * math.log10(level / 32768)
