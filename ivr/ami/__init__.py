"""Asterisk Manager Interface (AMI) client, built on panoramisk.

:class:`AmiClient` is the entry point; see :mod:`ivr.ami.client` for what is
used from panoramisk and why, and :mod:`ivr.ami.protocol` for the overrides.
"""

from .client import AmiClient, AmiResult, AmiState, backoff_delay
from .errors import AmiActionError, AmiActionTimeout, AmiDisconnected, AmiError
from .protocol import load_capture, parse_stream
from .results import (OriginateReason, OriginateResult, QueueEntry, QueueMember, QueueParams,
                      QueueStatus, QueueSummary)
from .wire import (AmiMessage, clean_value, escape_app_arg, format_originate_variable,
                   validate_header_name, validate_variable_name)

#: panoramisk's name for a parsed AMI message; ours is a subclass.
Message = AmiMessage

__all__ = [
    "AmiActionError", "AmiActionTimeout", "AmiClient", "AmiDisconnected", "AmiError",
    "AmiMessage", "AmiResult", "AmiState", "Message", "OriginateReason", "OriginateResult",
    "QueueEntry", "QueueMember", "QueueParams", "QueueStatus", "QueueSummary",
    "backoff_delay", "clean_value", "escape_app_arg", "format_originate_variable",
    "load_capture", "parse_stream", "validate_header_name", "validate_variable_name",
]
