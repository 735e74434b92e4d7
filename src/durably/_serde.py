"""Payload codec: JSON text in the journal, typed values in user code.

Encoding accepts JSON values plus dataclasses, pydantic models, datetimes,
dates, times, UUIDs, Decimals, enums, bytes, sets and tuples. Decoding is led
by the type annotation of the parameter or return value being filled: with
one, the value comes back as that type; without one, as plain JSON values.
Both a live run and a replay see the decoded value, never the original
object, so code behaves the same either way.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import inspect
import json
import types
import typing
import uuid
import weakref
from typing import Any, Union, get_args, get_origin

from ._errors import PayloadError

DEFAULT_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if dump is not None and callable(dump):
        return dump(mode="json")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if inspect.isawaitable(value):
        raise TypeError(
            f"it holds a {type(value).__name__}, not a value: an `await` is missing "
            "(a step or durable operation called without awaiting it)"
        )
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_encoder = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, default=_default, allow_nan=False
)
# For text with lone surrogates (file names from os.listdir, ...), which no
# database takes raw: escaped as \udcff, they read back exactly as they were.
_ascii_encoder = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=True, default=_default, allow_nan=False
)


# JSON text of the commonest results, made without the encoder (which builds
# a C encoder object for every non-string value it is given).
_FAST: dict[type, Any] = {
    int: int.__repr__,
    bool: lambda value: "true" if value else "false",
    type(None): lambda value: "null",
}


def encode(value: Any, *, what: str, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """JSON text of ``value``; ``what`` names it in errors ("result of step 'x'")."""
    fast = _FAST.get(type(value))
    if fast is not None:
        try:
            text: str = fast(value)
        except ValueError as exc:  # an int past Python's digit limit
            raise PayloadError(f"{what} cannot be stored as JSON: {exc}") from None
        if limit and len(text) > limit:
            raise PayloadError(
                f"{what} is {len(text)} bytes as JSON, over the {limit}-byte payload limit "
                "(App(max_payload_bytes=...)); store large data elsewhere and pass a "
                "reference"
            )
        return text
    try:
        text = _encoder.encode(value)
        if not utf8_encodable(text):
            text = _ascii_encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadError(
            f"{what} cannot be stored as JSON: {exc}. Use JSON values, dataclasses, "
            "pydantic models, datetimes, UUIDs, Decimals, enums or bytes."
        ) from None
    if "{" in text:  # no object, no keys to collide (the common scalar result)
        _check_keys(value, what)
    if limit and len(text) * 4 > limit:
        # A character is at most 4 bytes in UTF-8: only count bytes when close.
        size = len(text.encode("utf-8"))
        if size > limit:
            raise PayloadError(
                f"{what} is {size} bytes as JSON, over the {limit}-byte payload limit "
                "(App(max_payload_bytes=...)); store large data elsewhere and pass a "
                "reference"
            )
    return text


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _check_keys(value: Any, what: str) -> None:
    """Refuse a dict whose keys JSON would turn into the same text (``1`` and
    ``"1"``, ``True`` and ``"true"``): the JSON would hold both, and reading it
    back would silently keep only the last."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str:
                    _refuse_colliding(item, what)
                    break
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            children = [getattr(item, f.name) for f in dataclasses.fields(item)]
        else:
            continue
        pending.extend(child for child in children if type(child) not in _SCALARS)


def _refuse_colliding(item: dict[Any, Any], what: str) -> None:
    seen: dict[str, Any] = {}
    for key in item:
        text = _key_text(key)
        if text is None:
            continue
        if text in seen:
            raise PayloadError(
                f"{what} cannot be stored as JSON: its keys {seen[text]!r} and {key!r} "
                f"both become the JSON key {text!r}, and one value would be lost. "
                "Make the keys distinct (all str, or all int)."
            )
        seen[text] = key


def _key_text(key: Any) -> str | None:
    """The text the json module makes of a dict key (None: it refuses the key)."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return float.__repr__(key)
    return None


def utf8_encodable(text: str) -> bool:
    """False for text with lone surrogates, which no database stores raw."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode(text: str | None, tp: Any = Any) -> Any:
    if text is None:
        return None
    return convert(_loads(text), tp)


def _loads(text: str) -> Any:
    if text.isdigit() and text.isascii():  # a count, an id: no parser needed
        return int(text)
    return json.loads(text)


# JSON's own types: a value already of the annotated one needs no conversion.
_PLAIN = frozenset({int, float, str, bool, type(None)})


def convert(value: Any, tp: Any) -> Any:
    """Turn a plain JSON value into ``tp`` (best effort, never guessing)."""
    if type(value) is tp and tp in _PLAIN:
        return value
    if tp is Any or tp is None or tp is typing.Any or isinstance(tp, typing.TypeVar):
        return value
    if isinstance(tp, str):  # an unresolved forward reference: leave as is
        return value
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return convert(value, get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return _convert_union(value, get_args(tp))
    if origin is typing.Literal:
        return value
    if origin in (list, typing.List) or tp is list:  # noqa: UP006
        (item,) = get_args(tp) or (Any,)
        return [convert(v, item) for v in value] if isinstance(value, list) else value
    if origin in (set, frozenset) or tp in (set, frozenset):
        (item,) = get_args(tp) or (Any,)
        make = frozenset if (origin or tp) is frozenset else set
        return make(convert(v, item) for v in value) if isinstance(value, list) else value
    if origin is tuple or tp is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            return value
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0]) for v in value)
        if len(args) != len(value):  # not what the annotation says: keep every item
            return tuple(value)
        return tuple(convert(v, a) for v, a in zip(value, args, strict=True))
    if origin in (dict, typing.Dict) or tp is dict:  # noqa: UP006
        args = get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            return value
        return {_convert_key(k, args[0]): convert(v, args[1]) for k, v in value.items()}
    if origin is not None:
        return value
    if not isinstance(tp, type):
        return value
    return _convert_class(value, tp)


def _convert_key(key: Any, tp: Any) -> Any:
    """JSON object keys are strings: turn them back into numbers when annotated so."""
    if isinstance(key, str) and tp in (int, float):
        try:
            return tp(key)
        except ValueError:
            return key
    return convert(key, tp)


def _fits_dataclass(value: Any, tp: Any) -> bool:
    if not (dataclasses.is_dataclass(tp) and isinstance(value, dict)):
        return False
    fields = {f.name: f for f in dataclasses.fields(tp)}
    required = {
        name
        for name, f in fields.items()
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return set(value) <= set(fields) and required <= set(value)


def _convert_union(value: Any, options: tuple[Any, ...]) -> Any:
    if value is None and type(None) in options:
        return None
    real = [o for o in options if o is not type(None)]
    if len(real) == 1:
        return convert(value, real[0])
    for option in real:
        if isinstance(option, type) and _already(value, option):
            return value
    # Dataclasses: only one whose fields match the keys exactly, never a guess
    # that would drop data.
    for option in real:
        if _fits_dataclass(value, option):
            return convert(value, option)
    for option in real:
        if dataclasses.is_dataclass(option):
            continue
        try:
            return convert(value, option)
        except Exception:  # noqa: BLE001 - try the next member of the union
            continue
    return value


def _already(value: Any, tp: type) -> bool:
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value) is tp


def _convert_class(value: Any, tp: type) -> Any:
    if tp in (str, int, bool, type(None)):
        return value
    if tp is float:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return value
        hints = _hints(tp)
        kwargs = {}
        extra = {}
        names = {f.name: f for f in dataclasses.fields(tp)}
        for key, item in value.items():
            if key in names and names[key].init:
                kwargs[key] = convert(item, hints.get(key, Any))
            else:
                extra[key] = item
        obj = tp(**kwargs)
        for key, item in extra.items():
            if key in names:
                object.__setattr__(obj, key, convert(item, hints.get(key, Any)))
        return obj
    validate = getattr(tp, "model_validate", None)
    if validate is not None and callable(validate):
        return validate(value)
    if issubclass(tp, dt.datetime):
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if issubclass(tp, dt.date):
        return dt.date.fromisoformat(value) if isinstance(value, str) else value
    if issubclass(tp, dt.time):
        return dt.time.fromisoformat(value) if isinstance(value, str) else value
    if issubclass(tp, uuid.UUID):
        return uuid.UUID(value) if isinstance(value, str) else value
    if issubclass(tp, decimal.Decimal):
        return decimal.Decimal(value) if isinstance(value, (str, int, float)) else value
    if issubclass(tp, enum.Enum):
        return tp(value)
    if issubclass(tp, (bytes, bytearray)):
        return tp(base64.b64decode(value)) if isinstance(value, str) else value
    if issubclass(tp, (set, frozenset)):
        return tp(value) if isinstance(value, list) else value
    if issubclass(tp, tuple):
        return tuple(value) if isinstance(value, list) else value
    return value


# Weak keys: a lambda or closure given to ctx.run must not outlive its run.
_hint_cache: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return _hint_cache[obj]
    except (KeyError, TypeError):
        pass
    if not getattr(obj, "__annotations__", None) and not isinstance(obj, type):
        return {}  # nothing to resolve (most lambdas): not worth caching
    try:
        hints = typing.get_type_hints(obj, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolved names: fall back to raw annotations
        hints = dict(getattr(obj, "__annotations__", {}) or {})
    try:
        _hint_cache[obj] = hints
    except TypeError:
        pass
    return hints


def return_type(fn: Any) -> Any:
    """The return annotation of ``fn`` (``Any`` when absent)."""
    return _hints(fn).get("return", Any)


def param_types(fn: Any) -> dict[str, Any]:
    hints = dict(_hints(fn))
    hints.pop("return", None)
    return hints


def loads(text: str | None) -> Any:
    """Plain JSON values of a stored payload (no type conversion)."""
    return None if text is None else _loads(text)
