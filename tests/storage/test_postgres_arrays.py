"""Array literals written by durably instead of psycopg (``postgres/arrays.py``).

Whatever a column holds must read back exactly as psycopg's own lists did.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from durably._storage.postgres import arrays

TRICKY_TEXT = [
    "plain",
    "",
    "NULL",  # the word, not the value
    None,
    'say "hi"',
    "back\\slash",
    '\\"',
    "{braces},commas, and spaces ",
    "new\nline\ttab",
    "é ü 漢字 🙂",
    '{"json": [1, "two", null]}',
]


@pytest.fixture
def conn(postgres_server: Any) -> Iterator[psycopg.Connection[Any]]:
    name = postgres_server.create()
    base, _, _ = postgres_server.url.rpartition("/")
    with psycopg.connect(f"{base}/{name}") as connection:
        yield connection
    postgres_server.drop(name)


def _read(conn: psycopg.Connection[Any], literal: str, pg_type: str) -> Any:
    row = conn.execute(f"SELECT %s::{pg_type}[]", (literal,)).fetchone()
    assert row is not None
    return row[0]


def test_text_reads_back_exactly(conn: psycopg.Connection[Any]) -> None:
    assert _read(conn, arrays.text_array(TRICKY_TEXT), "text") == TRICKY_TEXT


def test_numbers_and_booleans_read_back_exactly(conn: psycopg.Connection[Any]) -> None:
    ints = [0, -1, 2**62, None, 7]
    floats = [0.1, 1_764_220_000.123456, -2.5e-300, 1e300, None, 3.0]
    bools = [True, False, None]
    assert _read(conn, arrays.int_array(ints), "bigint") == ints
    assert _read(conn, arrays.float_array(floats), "float8") == floats
    assert _read(conn, arrays.bool_array(bools), "bool") == bools
    back = _read(conn, arrays.float_array([math.inf, -math.inf]), "float8")
    assert back == [math.inf, -math.inf]


def test_an_empty_array_reads_back_empty(conn: psycopg.Connection[Any]) -> None:
    assert _read(conn, arrays.text_array([]), "text") == []
    assert arrays.columns([], "tif") == ["{}", "{}", "{}"]


def test_columns_encode_each_column_by_its_kind(conn: psycopg.Connection[Any]) -> None:
    rows = [("a", 1, 0.5, True), ('b"', None, None, False)]
    literals = arrays.columns(rows, "tifb")
    sql = "SELECT * FROM unnest(%s::text[], %s::int[], %s::float8[], %s::bool[])"
    assert conn.execute(sql, literals).fetchall() == rows


def test_columns_refuses_a_kind_per_column_that_does_not_match() -> None:
    with pytest.raises(ValueError, match="3 columns, 2 kinds"):
        arrays.columns([("a", 1, 2.0)], "ti")
