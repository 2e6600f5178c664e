"""The ZeroMQ wire format between gateways and workers.

A message is a multipart ZeroMQ message: frame 0 is a msgpack header (a map with short keys), followed by one
raw frame per tensor, little-endian and row-major, exactly as the V2 binary tensor extension lays tensors out.
Tensor bytes are never pickled, JSON-encoded or copied into Python lists on the way.

Header keys (all messages): ``v`` protocol version, ``k`` kind. Then by kind:

- ``infer`` (gateway -> worker): ``id`` request id, ``m`` model, ``ver`` version or nil, ``b`` time budget in
  ms left when sent (relative, like gRPC's timeout, so no clock sync is needed), ``tc`` trace context map or nil,
  ``o`` requested output names or nil, ``t`` tensor specs ``[[name, datatype, shape], ...]``.
- ``reply`` (worker -> gateway): ``id``, ``s`` status (``ok`` or an error code of ``errors``), ``e`` error
  message, ``m``, ``ver`` the version that answered, ``t`` tensor specs of the output frames.
- ``ping`` (gateway -> worker): ``n`` sequence number.  ``pong`` (worker -> gateway): ``n``, ``w`` worker id,
  ``r`` ready flag, ``q`` queued rows, ``f`` in-flight requests, ``ms`` model table (list of maps with
  ``name``, ``version``, ``aliases``, ``platform``, ``inputs``, ``outputs``), ``ew`` the predicted wait in ms
  before a newly queued request would start computing (0 when idle or not yet known).
- ``cancel`` (gateway -> worker): ``id`` of a request whose answer is no longer wanted.

Functions here are pure and socket-free: ``encode`` returns frames, ``decode`` takes frames and raises
``WireError`` (a ``BadRequest``) for any malformed input, never anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from tandem.common.datatypes import (
    BYTES,
    DATATYPES,
    datatype_of,
    decode_bytes_elements,
    element_count,
    encode_bytes_elements,
    numpy_dtype,
)
from tandem.common.errors import STATUS_OK, BadRequest, WireError

PROTOCOL_VERSION = 1

KIND_INFER = "infer"
KIND_REPLY = "reply"
KIND_PING = "ping"
KIND_PONG = "pong"
KIND_CANCEL = "cancel"

MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 64
MAX_RANK = 8
DEFAULT_MAX_TENSOR_BYTES = 256 * 1024 * 1024

Buffer = bytes | bytearray | memoryview | Any  # Any: zmq.Frame, which exports the buffer protocol


@dataclass(slots=True)
class Tensor:
    """A named tensor whose ``data`` is raw little-endian, row-major bytes (any buffer)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Buffer

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray, datatype: str | None = None) -> Tensor:
        """Wrap an array without copying when it is already C-contiguous and little-endian.

        ``datatype`` overrides the one inferred from the dtype: BF16 is held in numpy as ``uint16`` words.
        """
        datatype = datatype or datatype_of(array.dtype)
        if datatype == BYTES:
            items = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1).tolist()]
            return cls(name, BYTES, tuple(array.shape), encode_bytes_elements(items))
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        # A byte view rather than memoryview.cast, which refuses arrays with a zero-length dimension.
        return cls(name, datatype, tuple(array.shape), memoryview(array.reshape(-1).view(np.uint8)))

    def to_numpy(self) -> np.ndarray:
        """A read-only array over ``data`` (BYTES: an object array of ``bytes``)."""
        if self.datatype == BYTES:
            items = decode_bytes_elements(self.data, element_count(self.shape))
            out = np.empty(len(items), dtype=object)
            out[:] = items
            return out.reshape(self.shape)
        return np.frombuffer(self.data, dtype=numpy_dtype(self.datatype)).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the raw data in bytes."""
        return memoryview(self.data).nbytes


@dataclass(slots=True)
class InferRequest:
    request_id: str
    model: str
    version: str | None
    budget_ms: float
    inputs: list[Tensor]
    outputs: list[str] | None = None
    trace: dict[str, str] | None = None


@dataclass(slots=True)
class Reply:
    request_id: str
    status: str
    model: str
    version: str | None = None
    outputs: list[Tensor] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when the worker computed the outputs."""
        return self.status == STATUS_OK


@dataclass(slots=True)
class Ping:
    seq: int


@dataclass(slots=True)
class Pong:
    seq: int
    worker_id: str
    ready: bool
    queued_rows: int
    inflight: int
    models: list[dict[str, Any]]
    expected_wait_ms: float = 0.0


@dataclass(slots=True)
class Cancel:
    request_id: str


Message = InferRequest | Reply | Ping | Pong | Cancel


def _specs(tensors: list[Tensor]) -> list[list[Any]]:
    return [[t.name, t.datatype, list(t.shape)] for t in tensors]


def encode(message: Message) -> list[Buffer]:
    """The frames of ``message``: the msgpack header, then each tensor's raw data (not copied)."""
    tensors: list[Tensor] = []
    if isinstance(message, InferRequest):
        tensors = message.inputs
        header: dict[str, Any] = {
            "k": KIND_INFER,
            "id": message.request_id,
            "m": message.model,
            "ver": message.version,
            "b": float(message.budget_ms),
            "tc": message.trace,
            "o": message.outputs,
            "t": _specs(tensors),
        }
    elif isinstance(message, Reply):
        tensors = message.outputs
        header = {
            "k": KIND_REPLY,
            "id": message.request_id,
            "s": message.status,
            "e": message.error,
            "m": message.model,
            "ver": message.version,
            "t": _specs(tensors),
        }
    elif isinstance(message, Ping):
        header = {"k": KIND_PING, "n": message.seq}
    elif isinstance(message, Pong):
        header = {
            "k": KIND_PONG,
            "n": message.seq,
            "w": message.worker_id,
            "r": message.ready,
            "q": message.queued_rows,
            "f": message.inflight,
            "ms": message.models,
            "ew": message.expected_wait_ms,
        }
    elif isinstance(message, Cancel):
        header = {"k": KIND_CANCEL, "id": message.request_id}
    else:
        raise TypeError(f"not a wire message: {type(message).__name__}")
    header["v"] = PROTOCOL_VERSION
    return [msgpack.packb(header), *(t.data for t in tensors)]


def _field(header: dict[Any, Any], key: str, types: type | tuple[type, ...], *, optional: bool = False) -> Any:
    value = header.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise WireError(f"header field {key!r} has the wrong type")
    if not isinstance(value, types):
        raise WireError(f"header field {key!r} is missing or has the wrong type")
    return value


def _decode_tensors(header: dict[Any, Any], frames: Sequence[Buffer], max_tensor_bytes: int) -> list[Tensor]:
    specs = _field(header, "t", list)
    if len(specs) > MAX_TENSORS:
        raise WireError(f"message carries {len(specs)} tensors; at most {MAX_TENSORS} are allowed")
    if len(specs) != len(frames):
        raise WireError(f"header describes {len(specs)} tensors but {len(frames)} data frames follow")
    tensors: list[Tensor] = []
    for spec, frame in zip(specs, frames, strict=True):
        if not (isinstance(spec, list) and len(spec) == 3):
            raise WireError("tensor spec must be [name, datatype, shape]")
        name, datatype, shape = spec
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
            raise WireError("tensor spec must be [name: str, datatype: str, shape: list]")
        if datatype not in DATATYPES:
            raise WireError(f"tensor {name!r} has unknown datatype {datatype!r}")
        if len(shape) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape
        ):
            raise WireError(f"tensor {name!r} has an invalid shape {shape!r}")
        data = memoryview(frame)
        if data.nbytes > max_tensor_bytes:
            raise WireError(f"tensor {name!r} is {data.nbytes} bytes; the limit is {max_tensor_bytes}")
        count = element_count(shape)
        if datatype == BYTES:
            try:
                decode_bytes_elements(data, count)
            except BadRequest as exc:
                raise WireError(f"tensor {name!r}: {exc.message}") from None
        else:
            expected = count * numpy_dtype(datatype).itemsize
            if data.nbytes != expected:
                raise WireError(
                    f"tensor {name!r} of shape {shape} and datatype {datatype} needs {expected} bytes, "
                    f"got {data.nbytes}"
                )
        tensors.append(Tensor(name, datatype, tuple(shape), data))
    return tensors


def peek_request_id(frames: Sequence[Buffer]) -> str:
    """Best effort: the request id in the header of a message that failed to decode, else ``""``."""
    if not frames or memoryview(frames[0]).nbytes > MAX_HEADER_BYTES:
        return ""
    try:
        header = msgpack.unpackb(frames[0], raw=False)
    except Exception:  # msgpack raises several unrelated types for bad input
        return ""
    request_id = header.get("id") if isinstance(header, dict) else None
    return request_id if isinstance(request_id, str) else ""


def decode(frames: Sequence[Buffer], *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> Message:
    """Parse a message from its frames; raises ``WireError`` for anything malformed."""
    if not frames:
        raise WireError("empty message")
    raw_header = memoryview(frames[0])
    if raw_header.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header is {raw_header.nbytes} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw_header, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise WireError("header is not a map")
    if header.get("v") != PROTOCOL_VERSION:
        raise WireError(f"unsupported protocol version {header.get('v')!r}; expected {PROTOCOL_VERSION}")
    kind = header.get("k")
    body = frames[1:]
    if kind == KIND_INFER:
        budget = _field(header, "b", (int, float))
        outputs = _field(header, "o", list, optional=True)
        if outputs is not None and not all(isinstance(o, str) for o in outputs):
            raise WireError("requested outputs must be names")
        trace = _field(header, "tc", dict, optional=True)
        return InferRequest(
            request_id=_field(header, "id", str),
            model=_field(header, "m", str),
            version=_field(header, "ver", str, optional=True),
            budget_ms=float(budget),
            inputs=_decode_tensors(header, body, max_tensor_bytes),
            outputs=outputs,
            trace=trace,
        )
    if kind == KIND_REPLY:
        return Reply(
            request_id=_field(header, "id", str),
            status=_field(header, "s", str),
            error=_field(header, "e", str, optional=True) or "",
            model=_field(header, "m", str),
            version=_field(header, "ver", str, optional=True),
            outputs=_decode_tensors(header, body, max_tensor_bytes),
        )
    if body:
        raise WireError(f"a {kind!r} message carries no data frames")
    if kind == KIND_PING:
        return Ping(seq=_field(header, "n", int))
    if kind == KIND_PONG:
        return Pong(
            seq=_field(header, "n", int),
            worker_id=_field(header, "w", str),
            ready=_field(header, "r", bool),
            queued_rows=_field(header, "q", int),
            inflight=_field(header, "f", int),
            models=_field(header, "ms", list),
            expected_wait_ms=float(_field(header, "ew", (int, float), optional=True) or 0.0),
        )
    if kind == KIND_CANCEL:
        return Cancel(request_id=_field(header, "id", str))
    raise WireError(f"unknown message kind {kind!r}")
