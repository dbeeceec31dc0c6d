"""The safe template and expression language of flows.

A sandboxed Jinja2 environment: prompt texts and summaries are templates
(``您的余额为 {{ balance | money }}``), conditions and assignments are
expressions (``tier == 'vip' and balance < 0``). No ``eval``; attribute access to
internals is refused by the sandbox. Filters speak amounts, dates and digit
strings the way each language reads them.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_decimal
from jinja2 import ChainableUndefined, TemplateSyntaxError, Undefined, pass_context
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ExprError(Exception):
    pass


def _lang(ctx: Any) -> str:
    return str(ctx.get("lang") or "en-US")


def _is_zh(lang: str) -> bool:
    return lang.lower().startswith("zh")


@lru_cache(maxsize=64)
def _locale(lang: str) -> Locale:
    """Parsed once per language: babel re-reads locale data on every parse."""
    try:
        return Locale.parse(lang.replace("-", "_"))
    except (ValueError, UnknownLocaleError):
        return Locale.parse("en_US")


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, Undefined) or value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


@pass_context
def money(ctx: Any, value: Any, currency: str | None = None) -> str:
    """Amount as people say and read it: ``负35.20元`` / ``minus 35.20 yuan``.

    The currency defaults to the flow's ``settings.currency``."""
    currency = currency or str(ctx.get("_currency") or "CNY")
    amount = _decimal(value)
    if amount is None:
        return str(value)
    lang = _lang(ctx)
    text = format_decimal(abs(amount), format="#,##0.00", locale=_locale(lang))
    names = {"CNY": ("元", "yuan"), "USD": ("美元", "dollars"), "EUR": ("欧元", "euros")}
    zh_name, en_name = names.get(currency.upper(), (currency, currency))
    if _is_zh(lang):
        return f"{'负' if amount < 0 else ''}{text}{zh_name}"
    return f"{'minus ' if amount < 0 else ''}{text} {en_name}"


@pass_context
def date(ctx: Any, value: Any) -> str:
    """An ISO date as ``2026年12月5日`` / ``December 5, 2026``."""
    if isinstance(value, Undefined) or value in (None, ""):
        return ""
    try:
        day = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return str(value)
    return format_date(day, format="long", locale=_locale(_lang(ctx)))


def digits(value: Any) -> str:
    """A digit string read digit by digit: ``1 3 8 0``."""
    return " ".join(str(value).replace(" ", ""))


def mask(value: Any, keep: int = 4) -> str:
    """``****3321``: everything but the last ``keep`` characters hidden.

    Values shorter than twice ``keep`` (a PIN, a short code) are hidden whole,
    since their last characters would give away too much of them."""
    text = str(value or "")
    if len(text) < 2 * keep:
        return "*" * len(text)
    return "*" * 4 + text[-keep:]


def _number(value: Any) -> Any:
    amount = _decimal(value)
    if amount is None:
        return value
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)
    env.filters.update(money=money, date=date, digits=digits, mask=mask, number=_number)
    env.globals.clear()
    env.globals.update(range=range, len=len, min=min, max=max)
    return env


ENV = _make_env()
# Lenient environment for prompt texts: a missing variable renders empty
# rather than failing a live call.
LENIENT = ImmutableSandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)
LENIENT.filters.update(ENV.filters)
LENIENT.globals.clear()

_TEMPLATE_MARK = re.compile(r"{{|{%")


def is_template(text: str) -> bool:
    return bool(_TEMPLATE_MARK.search(text))


def check_template(text: str) -> str | None:
    """None if ``text`` parses as a template, else the error message."""
    try:
        ENV.parse(text)
    except TemplateSyntaxError as exc:
        return f"template does not parse: {exc.message}"
    return None


def check_expression(expr: str) -> str | None:
    try:
        ENV.compile_expression(str(expr))
    except TemplateSyntaxError as exc:
        return f"expression does not parse: {exc.message}"
    return None


@lru_cache(maxsize=4096)
def _compiled_expression(expr: str) -> Any:
    return ENV.compile_expression(expr, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compiled_template(text: str) -> Any:
    return LENIENT.from_string(text)


def evaluate(expr: str | int | float | bool | None, variables: dict[str, Any]) -> Any:
    """Evaluate an expression; a literal non-string value is returned as is.

    Missing variables and fields are falsy and evaluate to ``None``, so
    ``when: verified`` simply fails before verification. Anything the sandbox
    refuses, and type errors, raise :class:`ExprError`.
    """
    if not isinstance(expr, str):
        return expr
    try:
        result = _compiled_expression(expr)(**variables)
    except Exception as exc:  # sandbox violations, undefined names, type errors
        raise ExprError(f"{expr!r}: {exc}") from None
    if isinstance(result, Undefined):
        return None  # a missing variable or field is None, as in a form that was not filled in
    return result


def render(text: str, variables: dict[str, Any]) -> str:
    """Render a prompt text or summary template (missing variables render empty)."""
    if not is_template(text):
        return text
    try:
        return _compiled_template(text).render(**variables)
    except Exception as exc:
        raise ExprError(f"{text!r}: {exc}") from None
