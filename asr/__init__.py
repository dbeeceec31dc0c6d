"""Speech recognition for the IVR: Vosk models, grammars, recognisers and audio sources.

This package knows nothing of flows or of :mod:`ivr`; it takes plain data
(language codes, ``{choice: [phrases]}`` menus, PCM bytes) and returns
:class:`Recognition` results.

* :mod:`asr.models` — :class:`ModelRegistry`, Vosk models per language, loaded once.
* :mod:`asr.grammar` — :func:`build_grammar` / :func:`match` for menu choices.
* :mod:`asr.recognizer` — :class:`RecognizerPool`, streaming sessions, :class:`Recognition`.
* :mod:`asr.audiosocket` — Asterisk AudioSocket codec, server and :func:`recognize_stream`.
* :mod:`asr.eagi` — caller audio from EAGI's fd 3.
* :mod:`asr.wav` — audio files as 8 kHz mono PCM.
* :mod:`asr.testing` — a fake Asterisk AudioSocket client for tests.
"""

from .grammar import Grammar, build_grammar, match, normalize
from .models import LoadedModel, ModelRegistry, ModelStatus
from .recognizer import EndpointSettings, Recognition, RecognitionSession, RecognizerPool, Slot, Word

__all__ = [
    "EndpointSettings",
    "Grammar",
    "LoadedModel",
    "ModelRegistry",
    "ModelStatus",
    "Recognition",
    "RecognitionSession",
    "RecognizerPool",
    "Slot",
    "Word",
    "build_grammar",
    "match",
    "normalize",
]
