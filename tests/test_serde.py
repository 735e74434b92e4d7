"""Tests of the payload codec (src/durably/_serde.py)."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import pydantic
import pytest

from durably import PayloadError
from durably._serde import convert, decode, encode, param_types, return_type

UTC_PLUS_2 = dt.timezone(dt.timedelta(hours=2))
WHEN = dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC_PLUS_2)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


@dataclass
class Point:
    x: int
    y: int


@dataclass
class Order:
    id: uuid.UUID
    placed: dt.datetime
    where: Point
    tags: list[str] = field(default_factory=list)


@dataclass
class Circle:
    radius: float


@dataclass
class Square:
    side: int
    label: str


class User(pydantic.BaseModel):
    name: str
    born: dt.date
    id: uuid.UUID


def roundtrip(value: Any, tp: Any) -> Any:
    return decode(encode(value, what="value"), tp)


def test_dataclass_roundtrip() -> None:
    result = roundtrip(Point(1, 2), Point)
    assert type(result) is Point
    assert result == Point(1, 2)


def test_nested_dataclass_with_datetime_and_uuid() -> None:
    order = Order(id=ID, placed=WHEN, where=Point(3, 4), tags=["a", "b"])
    result = roundtrip(order, Order)
    assert result == order
    assert isinstance(result.id, uuid.UUID)
    assert isinstance(result.where, Point)
    assert result.placed.utcoffset() == dt.timedelta(hours=2)


def test_dataclass_encodes_as_json_object() -> None:
    text = encode(Order(id=ID, placed=WHEN, where=Point(3, 4)), what="value")
    assert json.loads(text) == {
        "id": str(ID),
        "placed": "2024-03-01T12:30:15.123456+02:00",
        "where": {"x": 3, "y": 4},
        "tags": [],
    }


def test_pydantic_model_roundtrip() -> None:
    user = User(name="ada", born=dt.date(1815, 12, 10), id=ID)
    assert json.loads(encode(user, what="value")) == {
        "name": "ada",
        "born": "1815-12-10",
        "id": str(ID),
    }
    result = roundtrip(user, User)
    assert isinstance(result, User)
    assert result == user


@pytest.mark.parametrize(
    ("value", "tp"),
    [
        (WHEN, dt.datetime),
        (dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), dt.datetime),
        (dt.date(2024, 2, 29), dt.date),
        (dt.time(23, 59, 58, 1000), dt.time),
        (ID, uuid.UUID),
        (decimal.Decimal("12345678901234567890.000000001"), decimal.Decimal),
        (Color.GREEN, Color),
        (Level.HIGH, Level),
        (b"\x00\xffbinary\n", bytes),
        (bytearray(b"abc"), bytearray),
        ({3, 1, 2}, set[int]),
        (frozenset({"a", "b"}), frozenset[str]),
        ((1, "two", 3.5), tuple[int, str, float]),
        ((1, 2, 3, 4), tuple[int, ...]),
        ((ID, WHEN), tuple[uuid.UUID, dt.datetime]),
        ((), tuple[int, ...]),
    ],
)
def test_scalar_and_container_roundtrip(value: Any, tp: Any) -> None:
    result = roundtrip(value, tp)
    assert result == value
    assert type(result) is type(value)


def test_aware_datetime_keeps_offset() -> None:
    assert roundtrip(WHEN, dt.datetime).utcoffset() == dt.timedelta(hours=2)


def test_variadic_tuple_of_dataclasses() -> None:
    assert roundtrip((Point(1, 2),), tuple[Point, ...]) == (Point(1, 2),)


def test_list_of_dataclasses() -> None:
    points = [Point(1, 2), Point(3, 4)]
    result = roundtrip(points, list[Point])
    assert result == points
    assert all(type(p) is Point for p in result)


def test_typing_list_alias() -> None:
    assert roundtrip([ID], typing.List[uuid.UUID]) == [ID]  # noqa: UP006


def test_dict_of_dataclasses() -> None:
    value = {"a": Point(1, 2), "b": Point(5, 6)}
    result = roundtrip(value, dict[str, Point])
    assert result == value
    assert type(result["b"]) is Point


@pytest.mark.parametrize(
    "tp",
    [Optional[Point], Union[Point, None], Point | None],  # noqa: UP007, UP045
)
def test_optional_none(tp: Any) -> None:
    assert encode(None, what="value") == "null"
    assert roundtrip(None, tp) is None


@pytest.mark.parametrize("tp", [Optional[Point], Point | None])  # noqa: UP045
def test_optional_value(tp: Any) -> None:
    result = roundtrip(Point(7, 8), tp)
    assert type(result) is Point
    assert result == Point(7, 8)


def test_optional_datetime_value() -> None:
    assert roundtrip(WHEN, Optional[dt.datetime]) == WHEN  # noqa: UP045


@pytest.mark.parametrize("value", [Circle(2.5), Square(3, "sq")])
def test_union_of_two_dataclasses(value: Any) -> None:
    result = roundtrip(value, Union[Circle, Square])  # noqa: UP007
    assert type(result) is type(value)
    assert result == value


def test_decode_none_text() -> None:
    assert decode(None, Point) is None


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (Point(1, 2), {"x": 1, "y": 2}),
        (WHEN, "2024-03-01T12:30:15.123456+02:00"),
        (ID, str(ID)),
        (decimal.Decimal("1.10"), "1.10"),
        (Color.RED, "red"),
        (b"hi", "aGk="),
        ((1, 2), [1, 2]),
        ({"k": [1, None, True]}, {"k": [1, None, True]}),
    ],
)
def test_unannotated_values_stay_plain_json(value: Any, plain: Any) -> None:
    assert decode(encode(value, what="value")) == plain
    assert decode(encode(value, what="value"), Any) == plain


def test_convert_int_to_float_annotation() -> None:
    result = convert(3, float)
    assert result == 3.0
    assert type(result) is float


def test_unserialisable_object_raises_payload_error() -> None:
    class Widget:
        pass

    with pytest.raises(PayloadError) as info:
        encode({"w": Widget()}, what="result of step 'make'")
    message = str(info.value)
    assert "result of step 'make'" in message
    assert "Widget" in message


def test_payload_over_limit() -> None:
    value = "x" * 200
    size = len(json.dumps(value))
    with pytest.raises(PayloadError) as info:
        encode(value, what="input of workflow 'w'", limit=100)
    message = str(info.value)
    assert "input of workflow 'w'" in message
    assert f"{size} bytes" in message
    assert "100-byte" in message


@pytest.mark.parametrize("value", [0, -7, 2**70, True, False, None])
def test_scalars_encode_as_the_json_module_does(value: Any) -> None:
    assert encode(value, what="v") == json.dumps(value)
    assert decode(encode(value, what="v")) == value


def test_an_int_enum_is_stored_by_its_value_not_taken_for_an_int() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    assert encode(Level.HIGH, what="v") == "3"
    assert encode(True, what="v") == "true"  # a bool is not stored as 1


def test_an_int_past_pythons_digit_limit_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="result of step 's' cannot be stored as JSON"):
        encode(10**5000, what="result of step 's'")


def test_an_int_over_the_payload_limit_is_refused() -> None:
    with pytest.raises(PayloadError, match=r"31 bytes as JSON, over the 10-byte"):
        encode(10**30, what="v", limit=10)


def test_digit_text_decodes_as_json_would() -> None:
    assert decode("42") == 42 and type(decode("42")) is int
    assert decode("42", float) == 42.0
    with pytest.raises(ValueError):
        decode("\u0663")  # an Arabic-Indic three: int() reads it, JSON does not


def test_payload_exactly_at_limit_is_accepted() -> None:
    text = encode("x" * 98, what="value", limit=100)
    assert len(text) == 100


@pytest.mark.parametrize("value", [float("nan"), [1.0, float("inf")], {"v": float("-inf")}])
def test_nan_and_infinity_rejected(value: Any) -> None:
    with pytest.raises(PayloadError, match="step result"):
        encode(value, what="step result")


def annotated(a: int, when: dt.datetime, *, points: list[Point]) -> Order:
    raise NotImplementedError


def unannotated(a, b):  # type: ignore[no-untyped-def]
    raise NotImplementedError


def test_return_type_of_annotated_function() -> None:
    assert return_type(annotated) is Order


def test_return_type_of_unannotated_function() -> None:
    assert return_type(unannotated) is typing.Any


def test_param_types() -> None:
    assert param_types(annotated) == {"a": int, "when": dt.datetime, "points": list[Point]}
    assert param_types(unannotated) == {}


# -- regressions found in review ------------------------------------------------


def test_byte_limit_counts_utf8_bytes_not_characters() -> None:
    with pytest.raises(PayloadError, match="122 bytes"):
        encode("é" * 60, what="x", limit=100)


def test_union_of_dataclasses_picks_the_one_whose_fields_match() -> None:
    @dataclass
    class Cat:
        name: str

    @dataclass
    class Dog:
        name: str
        bark: bool

    decoded = decode(encode(Dog("r", True), what="x"), Union[Cat, Dog])  # noqa: UP007
    assert decoded == Dog("r", True)


def test_int_dict_keys_come_back_as_ints() -> None:
    assert decode(encode({1: "a", 20: "b"}, what="x"), dict[int, str]) == {
        1: "a",
        20: "b",
    }


def test_fixed_tuple_with_unexpected_length_keeps_every_item() -> None:
    assert decode(encode((1, 2, 3), what="x"), tuple[int, int]) == (1, 2, 3)


@pytest.mark.parametrize(
    ("value", "keys"),
    [
        ({1: "a", "1": "b"}, "1 and '1'"),
        ([{"x": {True: 1, "true": 2}}], "True and 'true'"),
        ({"n": {None: 1, "null": 2}}, "None and 'null'"),
        ((0, {2.5: "x", "2.5": "y"}), "2.5 and '2.5'"),
        (Point({1: 1, "1": 2}, 0), "1 and '1'"),  # type: ignore[arg-type]
    ],
)
def test_keys_that_become_the_same_json_key_are_refused(value: Any, keys: str) -> None:
    with pytest.raises(PayloadError) as info:
        encode(value, what="the result of step 'tally'")
    message = str(info.value)
    assert "the result of step 'tally'" in message
    assert f"its keys {keys} both become the JSON key" in message


def test_keys_of_mixed_types_that_stay_distinct_are_kept() -> None:
    value = {1: "a", "2": "b", False: "c", None: "d", 1.5: "e", "x": {3: [4]}}
    assert decode(encode(value, what="x")) == {
        "1": "a",
        "2": "b",
        "false": "c",
        "null": "d",
        "1.5": "e",
        "x": {"3": [4]},
    }
