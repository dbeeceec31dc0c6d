"""The visual IVR books and cancels callbacks through the callback feature's
API (``callback.api``), so a request made on screen is the same request, with
the same trail, as one made by voice or at the desk. A refused request raises
``CallbackError`` (a ``ValueError``) and is shown to the caller."""

from callback.api import CallbackError, cancel_callback, request_callback

__all__ = ["CallbackError", "cancel_callback", "request_callback"]
