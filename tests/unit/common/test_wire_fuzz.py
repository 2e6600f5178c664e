"""Property-based tests of the wire format: nothing but ``WireError`` escapes ``decode``; valid messages round-trip.

Three kinds of hostile input: random bytes as frames, well-formed msgpack headers with random fields (which
reach the field checks instead of failing at msgpack), and valid messages truncated, padded or re-framed.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.common import wire
from tandem.common.datatypes import BYTES, DATATYPES, NUMPY_BY_DATATYPE, encode_bytes_elements
from tandem.common.wire import Cancel, InferRequest, Ping, Pong, Reply, Tensor, WireError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["v", "k", "id", "m", "ver", "b", "tc", "o", "t", "s", "e", "n", "w", "r", "q", "f", "ms", "ew"]
KINDS = [wire.KIND_INFER, wire.KIND_REPLY, wire.KIND_PING, wire.KIND_PONG, wire.KIND_CANCEL]
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SMALL_TEXT = st.text(max_size=12)

msgpack_values = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats() | SMALL_TEXT | st.binary(max_size=16),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(SMALL_TEXT, children, max_size=4),
    max_leaves=12,
)
shapes = st.lists(st.integers(min_value=-2, max_value=2**41), max_size=wire.MAX_RANK + 1)
tensor_specs = st.lists(
    st.tuples(SMALL_TEXT, st.sampled_from([*sorted(DATATYPES), "FP8", ""]), shapes).map(list) | msgpack_values,
    max_size=4,
)
headers = st.fixed_dictionaries(
    {"v": st.sampled_from([wire.PROTOCOL_VERSION, 0, 2, "1"]), "k": st.sampled_from([*KINDS, "other"])},
    optional={key: msgpack_values for key in KEYS if key not in ("v", "k")} | {"t": tensor_specs},
)
data_frames = st.lists(st.binary(max_size=64), max_size=5)


def _decode_only_wire_errors(frames: list[Any]) -> wire.Message | None:
    try:
        return wire.decode(frames, max_tensor_bytes=1024)
    except WireError:
        return None
    finally:
        wire.peek_request_id(frames)  # best effort, must never raise either


@FUZZ
@given(st.lists(st.binary(max_size=128), max_size=6))
def test_random_frames_raise_only_wire_errors(frames: list[bytes]) -> None:
    _decode_only_wire_errors(frames)


@FUZZ
@given(headers, data_frames)
def test_random_headers_raise_only_wire_errors(header: dict[str, Any], frames: list[bytes]) -> None:
    _decode_only_wire_errors([msgpack.packb(header), *frames])


@FUZZ
@given(msgpack_values, data_frames)
def test_any_msgpack_value_as_header_raises_only_wire_errors(header: Any, frames: list[bytes]) -> None:
    _decode_only_wire_errors([msgpack.packb(header), *frames])


# ------------------------------------------------------------------------------------------ valid messages

NAMES = st.text(min_size=1, max_size=8)


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    datatype = draw(st.sampled_from(sorted(DATATYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    count = 1
    for dim in shape:
        count *= dim
    if datatype == BYTES:
        data = encode_bytes_elements(draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count)))
    else:
        data = draw(st.binary(min_size=count * NUMPY_BY_DATATYPE[datatype].itemsize, max_size=count * 8))
        data = data[: count * NUMPY_BY_DATATYPE[datatype].itemsize]
    return Tensor(draw(NAMES), datatype, shape, data)


tensor_lists = st.lists(tensors(), max_size=3)
infer_requests = st.builds(
    InferRequest,
    request_id=NAMES,
    model=NAMES,
    version=st.none() | NAMES,
    budget_ms=st.floats(min_value=0, max_value=1e9),
    inputs=tensor_lists,
    outputs=st.none() | st.lists(NAMES, max_size=3),
    trace=st.none() | st.dictionaries(NAMES, NAMES, max_size=2),
)
replies = st.builds(
    Reply,
    request_id=NAMES,
    status=st.sampled_from(["ok", "bad_request", "overloaded"]),
    model=NAMES,
    version=st.none() | NAMES,
    outputs=tensor_lists,
    error=st.text(max_size=20),
)
pongs = st.builds(
    Pong,
    seq=st.integers(0, 2**63 - 1),
    worker_id=NAMES,
    ready=st.booleans(),
    queued_rows=st.integers(0, 2**31),
    inflight=st.integers(0, 2**31),
    models=st.lists(st.dictionaries(NAMES, NAMES, max_size=3), max_size=3),
    expected_wait_ms=st.floats(min_value=0, max_value=1e6),
)
messages = (
    infer_requests
    | replies
    | pongs
    | st.builds(Ping, seq=st.integers(0, 2**63 - 1))
    | st.builds(Cancel, request_id=NAMES)
)


def _plain(message: wire.Message) -> Any:
    """A comparable form: tensors as (name, datatype, shape, bytes)."""
    fields = {}
    for name in message.__slots__:  # type: ignore[union-attr]
        value = getattr(message, name)
        if isinstance(value, list) and value and isinstance(value[0], Tensor):
            value = [(t.name, t.datatype, t.shape, bytes(memoryview(t.data))) for t in value]
        fields[name] = value
    return type(message).__name__, fields


@FUZZ
@given(messages)
def test_valid_messages_round_trip(message: wire.Message) -> None:
    frames = [bytes(memoryview(frame)) for frame in wire.encode(message)]
    assert _plain(wire.decode(frames)) == _plain(message)


@FUZZ
@given(messages, st.data())
def test_truncated_or_reframed_messages_raise_only_wire_errors(message: wire.Message, data: st.DataObject) -> None:
    frames = [bytes(memoryview(frame)) for frame in wire.encode(message)]
    index = data.draw(st.integers(0, len(frames) - 1))
    mutation = data.draw(st.sampled_from(["truncate", "extend", "drop", "duplicate", "split"]))
    frame = frames[index]
    if mutation == "truncate":
        frames[index] = frame[: data.draw(st.integers(0, max(0, len(frame) - 1)))]
    elif mutation == "extend":
        frames[index] = frame + data.draw(st.binary(min_size=1, max_size=8))
    elif mutation == "drop":
        del frames[index]
    elif mutation == "duplicate":
        frames.insert(index, frame)
    else:
        cut = data.draw(st.integers(0, len(frame)))
        frames[index : index + 1] = [frame[:cut], frame[cut:]]
    _decode_only_wire_errors(frames)


def test_an_oversize_tensor_frame_is_a_wire_error() -> None:
    frames = wire.encode(InferRequest("r", "m", None, 1.0, [Tensor("x", "UINT8", (2048,), bytes(2048))]))
    try:
        wire.decode(frames, max_tensor_bytes=1024)
    except WireError as exc:
        assert "limit is 1024" in exc.message
    else:
        raise AssertionError("an oversize tensor was accepted")
