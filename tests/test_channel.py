"""The config channel: whole texts, in order, however the pipe cuts them."""

from __future__ import annotations

import asyncio
import os

from hypothesis import given
from hypothesis import strategies as st

from shadowproxy import channel


@given(
    st.lists(st.tuples(st.text(), st.booleans()), max_size=5),
    st.integers(min_value=1, max_value=64),
)
def test_texts_arrive_whole_in_order_and_the_newest_last(
    texts: list[tuple[str, bool]], cut: int
) -> None:
    got: list[tuple[str, bool]] = []
    reader = channel.FrameReader(lambda text, catch_up: got.append((text, catch_up)))
    data = b"".join(channel.frame(text, catch_up=catch_up) for text, catch_up in texts)
    for start in range(0, len(data), cut):
        reader.data_received(data[start : start + cut])
    assert got[-1:] == texts[-1:]
    remaining = iter(texts)
    assert all(text in remaining for text in got)  # a subsequence: skipped ones were older


def test_of_texts_read_at_once_only_the_newest_is_given() -> None:
    got: list[tuple[str, bool]] = []
    channel.FrameReader(lambda text, catch_up: got.append((text, catch_up))).data_received(
        b"".join(channel.frame(text) for text in ("a: 1", "a: 2", "a: 3"))
    )
    assert got == [("a: 3", False)]


def test_a_fault_while_applying_keeps_the_channel() -> None:
    got: list[str] = []

    def apply(text: str, catch_up: bool) -> None:
        if text == "bad":
            raise ValueError("cannot apply")
        got.append(text)

    reader = channel.FrameReader(apply)
    reader.data_received(channel.frame("bad"))  # logged, not raised
    reader.data_received(channel.frame("good"))
    assert got == ["good"]


def test_the_first_text_is_read_no_further_than_its_end() -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, channel.frame("listen: a") + channel.frame("listen: é"))
        os.close(write_end)
        assert channel.read_frame(read_end) == "listen: a"
        assert channel.read_frame(read_end) == "listen: é"
        assert channel.read_frame(read_end) is None  # the supervisor closed its end
    finally:
        os.close(read_end)


async def test_a_text_larger_than_a_pipe_holds_goes_through_without_blocking() -> None:
    read_end, write_end = os.pipe()
    text = "#" * 300_000  # a pipe holds 64 KiB
    sender = await channel.sender(write_end)
    sender.write(channel.frame(text))  # returns at once: the rest waits in the buffer
    got: asyncio.Queue[str] = asyncio.Queue()
    receiver = await channel.receive(read_end, lambda text, _: got.put_nowait(text))
    try:
        assert await asyncio.wait_for(got.get(), 10) == text
    finally:
        sender.close()
        receiver.close()
