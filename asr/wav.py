"""Load audio files as 8 kHz mono signed 16-bit little-endian PCM.

Used by the simulator's ``--audio`` option and by tests. Plain PCM WAV files
are read with the standard ``wave`` module and converted with ``audioop``
(no subprocess); anything else (mp3, ogg, float or A-law WAV, …) goes
through pydub, which runs ffmpeg.
"""

from __future__ import annotations

import array
import os
import wave
from pathlib import Path

from ._audio import SAMPLE_WIDTH, audioop

__all__ = ["AudioLoadError", "convert_pcm", "load_pcm", "write_wav"]

TELEPHONY_RATE = 8000


class AudioLoadError(Exception):
    """The file cannot be read or decoded as audio."""


def convert_pcm(
    data: bytes, *, sample_rate: int, channels: int, sample_width: int, to_rate: int = TELEPHONY_RATE
) -> bytes:
    """Convert linear PCM to mono s16le at ``to_rate``.

    ``sample_width`` is in bytes (1 = unsigned 8-bit as in WAV, 2, 3 or 4 =
    signed little-endian).
    """
    if sample_width not in (1, 2, 3, 4):
        raise AudioLoadError(f"unsupported sample width {sample_width}")
    usable = len(data) - len(data) % (sample_width * channels)
    data = data[:usable]
    if sample_width == 1:
        data = audioop.bias(data, 1, -128)  # WAV 8-bit is unsigned
    if sample_width != SAMPLE_WIDTH:
        data = audioop.lin2lin(data, sample_width, SAMPLE_WIDTH)
    if channels == 2:
        data = audioop.tomono(data, SAMPLE_WIDTH, 0.5, 0.5)
    elif channels > 2:
        data = _downmix(data, channels)
    if sample_rate != to_rate:
        data, _ = audioop.ratecv(data, SAMPLE_WIDTH, 1, sample_rate, to_rate, None)
    return data


def _downmix(data: bytes, channels: int) -> bytes:
    """Average any number of interleaved s16le channels into one."""
    samples = array.array("h", data)
    mono = array.array("h", (sum(samples[i : i + channels]) // channels for i in range(0, len(samples), channels)))
    return mono.tobytes()


def _load_with_wave(path: Path, to_rate: int) -> bytes:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        frames = wav.readframes(params.nframes)
    return convert_pcm(
        frames,
        sample_rate=params.framerate,
        channels=params.nchannels,
        sample_width=params.sampwidth,
        to_rate=to_rate,
    )


def _load_with_pydub(path: Path, to_rate: int) -> bytes:
    try:
        from pydub import AudioSegment  # optional path: needs ffmpeg
    except ImportError as exc:  # pragma: no cover - pydub is a project dependency
        raise AudioLoadError(f"{path}: not a PCM WAV file and pydub is not installed") from exc
    try:
        segment = AudioSegment.from_file(str(path))
    except Exception as exc:  # pydub raises CouldntDecodeError, OSError, …
        raise AudioLoadError(f"{path}: cannot decode audio: {exc}") from exc
    segment = segment.set_channels(1).set_sample_width(SAMPLE_WIDTH).set_frame_rate(to_rate)
    return bytes(segment.raw_data)


def load_pcm(path: str | os.PathLike[str], *, sample_rate: int = TELEPHONY_RATE) -> bytes:
    """Read an audio file as mono s16le PCM at ``sample_rate`` (8 kHz by default).

    Raises:
        AudioLoadError: missing file or undecodable audio.
    """
    p = Path(path)
    if not p.is_file():
        raise AudioLoadError(f"{p}: no such file")
    try:
        return _load_with_wave(p, sample_rate)
    except (wave.Error, EOFError, AudioLoadError):
        # Not plain PCM WAV (compressed, float, another container): try ffmpeg.
        return _load_with_pydub(p, sample_rate)


def write_wav(path: str | os.PathLike[str], pcm: bytes, *, sample_rate: int = TELEPHONY_RATE) -> None:
    """Write mono s16le PCM as a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
