"""Audio conversion to what Asterisk's ``wav`` format plays: 8 kHz, mono, signed 16-bit PCM.

pydub reads the source (plain PCM WAV directly, anything else through
ffmpeg) and exports through ffmpeg, whose resampler low-pass filters before
decimating (pydub's own ``set_frame_rate`` uses ``audioop.ratecv``, a linear
interpolator that folds espeak-ng's 4-11 kHz hiss back into the telephone
band). ``-fflags +bitexact`` and no metadata keep the output byte-identical
for identical input, which the content-addressed cache relies on.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

TELEPHONY_RATE = 8000
CHANNELS = 1
SAMPLE_WIDTH = 2  # bytes
# Part of every cache key: a change here re-renders everything.
FORMAT_ID = f"wav-{TELEPHONY_RATE}-{CHANNELS}-{SAMPLE_WIDTH * 8}-v1"

FFMPEG_PARAMETERS = [
    "-ar", str(TELEPHONY_RATE), "-ac", str(CHANNELS),
    "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
]

# Extensions accepted for human recordings, in order of preference.
RECORDING_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".wma", ".aiff", ".aif",
                        ".gsm", ".ulaw", ".alaw", ".sln")


class AudioError(Exception):
    """A file is not audio we can use."""


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    sample_width: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.rate if self.rate else 0.0

    @property
    def telephony(self) -> bool:
        return (self.rate, self.channels, self.sample_width) == (TELEPHONY_RATE, CHANNELS, SAMPLE_WIDTH)


def wav_info(path: str | Path) -> WavInfo:
    """The header of a PCM WAV file, read with the standard ``wave`` module."""
    try:
        with wave.open(str(path), "rb") as w:
            return WavInfo(w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise AudioError(f"{path}: not a PCM WAV file ({exc})") from None


def check_telephony_wav(path: str | Path) -> WavInfo:
    """Raise :class:`AudioError` unless ``path`` is a non-empty 8 kHz mono 16-bit WAV."""
    info = wav_info(path)
    if not info.telephony:
        raise AudioError(f"{path}: {info.rate} Hz, {info.channels} channel(s), {info.sample_width * 8}-bit; "
                         f"expected {TELEPHONY_RATE} Hz mono 16-bit")
    if info.frames == 0:
        raise AudioError(f"{path}: no audio")
    return info


def to_telephony(src: str | Path, dst: str | Path) -> WavInfo:
    """Convert any audio file pydub + ffmpeg can read to an 8 kHz mono 16-bit WAV."""
    from pydub import AudioSegment
    from pydub.exceptions import CouldntDecodeError, CouldntEncodeError

    src = Path(src)
    try:
        if src.suffix.lower() == ".wav":
            try:  # plain PCM: read without a subprocess
                segment = AudioSegment.from_wav(str(src))
            except Exception:  # noqa: BLE001 - float, A-law, extensible ...: let ffmpeg decode it
                segment = AudioSegment.from_file(str(src))
        else:
            segment = AudioSegment.from_file(str(src))
    except (CouldntDecodeError, IndexError, OSError) as exc:
        raise AudioError(f"{src}: cannot decode ({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc})") \
            from None
    if len(segment) == 0:
        raise AudioError(f"{src}: no audio")
    try:
        segment.export(str(dst), format="wav", codec="pcm_s16le", parameters=list(FFMPEG_PARAMETERS))
    except CouldntEncodeError as exc:
        raise AudioError(f"{src}: conversion failed: {str(exc)[-300:]}") from None
    return check_telephony_wav(dst)
