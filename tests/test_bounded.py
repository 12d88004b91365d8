"""`BoundedCopy`: what it keeps of a body, and what keeping it costs."""

from __future__ import annotations

import sys

import pytest

from shadowproxy.bounded import SMALL, BoundedCopy


@pytest.mark.parametrize(
    "sizes",
    [
        [5],
        [3, 3, 3],
        [SMALL - 1, 1, SMALL * 2, 2, 2, SMALL + 1, 7],
        [1] * (SMALL * 3),
        [SMALL * 4, 1, SMALL * 4, 1],
    ],
)
@pytest.mark.parametrize("limit", [1, 10, SMALL + 3, 10**9])
def test_keeps_the_first_limit_bytes_in_order_and_counts_all(sizes: list[int], limit: int) -> None:
    chunks = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
    copy = BoundedCopy(limit)
    for chunk in chunks:
        copy.add(chunk)
    whole = b"".join(chunks)
    assert copy.body() == whole[:limit]
    assert copy.kept == min(limit, len(whole))
    assert copy.size == len(whole)
    assert copy.overflowed is (len(whole) > limit)


def test_a_single_piece_is_handed_back_without_a_copy() -> None:
    body = b"x" * 100
    copy = BoundedCopy(1000)
    copy.add(body)
    assert copy.body() is body


@pytest.mark.parametrize("chunk_size", [2, 100, SMALL - 1])
def test_tiny_chunks_cost_little_more_than_their_bytes(chunk_size: int) -> None:
    """A chunked body arrives a chunk at a time; each bytes object costs about 40 bytes
    besides its content, so keeping them one by one held many times the limit."""
    limit = 1024 * 1024
    copy = BoundedCopy(limit)
    source = bytes(range(256)) * (limit // 256 + 1)
    for start in range(0, limit, chunk_size):
        copy.add(source[start : start + chunk_size])  # a new object each, as from a parser
    held = sys.getsizeof(copy.chunks) + sum(sys.getsizeof(piece) for piece in copy.chunks)
    assert copy.kept == limit
    assert held < limit * 1.2, f"{held / limit:.2f} times the limit"
