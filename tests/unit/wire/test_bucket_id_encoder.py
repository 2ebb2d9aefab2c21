"""Bucket ids against the reference hashids library: the same text for every id and every secret.

The operator encodes bucket ids itself; the hashids library (what Core uses) is only the oracle
here, and the product must not depend on it at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hashids import Hashids  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.wire.raw_uid import BUCKET_ID_MAX_NUMBER, BUCKET_ID_MIN_LENGTH, bucket_id

PACKAGE = Path(__file__).resolve().parents[3] / "src" / "uid2_operator"

SECRETS = [
    "",
    "s3cr3t",
    "this is my salt",
    "Ünïcödé ☃ 秘密 \U0001d11e",
    "a very long bucket id secret " * 20,
]

# The smallest and largest id of each digit count (base 44): every length rule of the scheme.
DIGIT_COUNT_EDGES = sorted(
    {n for k in range(11) for n in (44**k - 1, 44**k, 44**k + 1) if 0 <= n <= BUCKET_ID_MAX_NUMBER}
)
EDGES = sorted({0, 1, 99, 100, 101, 199, 200, BUCKET_ID_MAX_NUMBER - 1, BUCKET_ID_MAX_NUMBER})


def _reference(number: int, secret: str) -> str:
    encoded: str = Hashids(salt=secret, min_length=BUCKET_ID_MIN_LENGTH).encode(number)
    return encoded


def test_every_id_up_to_200000_matches_the_library() -> None:
    secret = "bucket-id-secret"
    reference = Hashids(salt=secret, min_length=BUCKET_ID_MIN_LENGTH)
    mismatches = [
        n
        for n in range(200_001)
        if bucket_id(n, id_prefix="", id_secret=secret) != reference.encode(n)
    ]
    assert mismatches[:10] == []


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("number", EDGES + DIGIT_COUNT_EDGES)
def test_edge_ids_match_the_library(number: int, secret: str) -> None:
    assert bucket_id(number, id_prefix="p-", id_secret=secret) == "p-" + _reference(number, secret)


SECRET_TEXT = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0x80), min_size=1, max_size=40),
    st.text(min_size=200, max_size=1000),
)


@settings(deadline=None, max_examples=300)
@given(st.integers(min_value=0, max_value=BUCKET_ID_MAX_NUMBER), SECRET_TEXT)
def test_any_id_under_any_secret_matches_the_library(number: int, secret: str) -> None:
    assert bucket_id(number, id_prefix="", id_secret=secret) == _reference(number, secret)


@settings(deadline=None, max_examples=300)
@given(st.integers(min_value=0, max_value=(1 << 20) - 1), SECRET_TEXT)
def test_production_bucket_ids_match_the_library(number: int, secret: str) -> None:
    assert bucket_id(number, id_prefix="", id_secret=secret) == _reference(number, secret)


def test_the_product_does_not_load_the_hashids_library() -> None:
    importers: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            if any(name.split(".")[0] == "hashids" for name in names):
                importers.append(str(path.relative_to(PACKAGE)))
    assert importers == []
