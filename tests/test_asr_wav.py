"""Loading audio files as 8 kHz mono s16le PCM."""

from __future__ import annotations

import array
import math
import subprocess
import wave
from pathlib import Path

import pytest

from asr._audio import rms
from asr.wav import AudioLoadError, load_pcm, write_wav


def tone(rate: int, seconds: float, freq: float = 440.0, amplitude: int = 8000) -> array.array:
    return array.array(
        "h", (int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(int(rate * seconds)))
    )


def write(path: Path, samples: bytes, *, rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples)
    return path


def test_8k_mono_passes_through(tmp_path: Path) -> None:
    pcm = tone(8000, 0.5).tobytes()
    assert load_pcm(write(tmp_path / "a.wav", pcm, rate=8000)) == pcm


def test_stereo_44k_is_downmixed_and_resampled(tmp_path: Path) -> None:
    mono = tone(44100, 1.0)
    stereo = array.array("h")
    for s in mono:
        stereo.extend((s, s))
    pcm = load_pcm(write(tmp_path / "b.wav", stereo.tobytes(), rate=44100, channels=2))
    assert abs(len(pcm) - 16000) <= 4  # 1 s at 8 kHz, 2 bytes a sample
    assert 5000 < rms(pcm) < 6500  # a 8000-peak sine keeps its level (~5657)


def test_8bit_unsigned_wav(tmp_path: Path) -> None:
    samples = bytes(128 + int(100 * math.sin(2 * math.pi * 440 * i / 16000)) for i in range(16000))
    pcm = load_pcm(write(tmp_path / "c.wav", samples, rate=16000, width=1))
    assert abs(len(pcm) - 16000) <= 4
    assert rms(pcm) > 10000  # centred on zero, scaled to 16 bits


def test_other_rate_on_request(tmp_path: Path) -> None:
    pcm = load_pcm(write(tmp_path / "d.wav", tone(8000, 1.0).tobytes(), rate=8000), sample_rate=16000)
    assert abs(len(pcm) - 32000) <= 4


def test_compressed_audio_goes_through_ffmpeg(tmp_path: Path) -> None:
    source = write(tmp_path / "e.wav", tone(22050, 1.0).tobytes(), rate=22050)
    flac = tmp_path / "e.flac"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(source), str(flac)], check=True)
    pcm = load_pcm(flac)
    assert abs(len(pcm) - 16000) <= 32
    assert rms(pcm) > 4000


def test_write_wav_round_trip(tmp_path: Path) -> None:
    pcm = tone(8000, 0.2).tobytes()
    write_wav(tmp_path / "f.wav", pcm)
    assert load_pcm(tmp_path / "f.wav") == pcm


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(AudioLoadError):
        load_pcm(tmp_path / "nope.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioLoadError):
        load_pcm(garbage)
