"""Prompt audio: every prompt of every flow as a file Asterisk plays.

* :mod:`ivr.prompts.build` / ``ivr prompts build``: static prompts rendered
  ahead of time into ``<sounds_dir>/<lang>/<prompt-id>.wav`` (8 kHz mono
  16-bit), from a human recording in ``recordings/<lang>/`` when there is one,
  else synthesised with pyttsx3 on espeak-ng;
* :mod:`ivr.prompts.render`: the content-addressed cache and the worker
  processes (one per job, killed on timeout);
* :mod:`ivr.prompts.runtime`: the server extension rendering prompts with
  variables at call time and replacing missing files with synthesis;
* :mod:`ivr.prompts.worker`: the worker itself, and why pyttsx3 needs two
  work-arounds (rate and completion) there.

docs/prompts.md describes it for operators.
"""

from ivr.prompts.render import PromptSettings, Rendered, Renderer, RenderError, RenderTimeout

__all__ = ["PromptSettings", "Rendered", "Renderer", "RenderError", "RenderTimeout"]
