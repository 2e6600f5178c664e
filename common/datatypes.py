"""The V2 inference protocol's datatypes and their numpy equivalents.

BF16 has no numpy dtype: it travels as raw 2-byte words (``uint16``) and the worker reinterprets it as
``torch.bfloat16``. BYTES elements use the protocol's encoding: a 4-byte little-endian length, then the bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from tandem.common.errors import BadRequest

NUMPY_BY_DATATYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}
BYTES = "BYTES"
DATATYPES = frozenset([*NUMPY_BY_DATATYPE, BYTES])

_DATATYPE_BY_NUMPY: dict[np.dtype, str] = {dtype: name for name, dtype in NUMPY_BY_DATATYPE.items() if name != "BF16"}

_LENGTH_PREFIX = struct.Struct("<I")


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype that holds one element of ``datatype``; raises BadRequest for unknown or BYTES."""
    try:
        return NUMPY_BY_DATATYPE[datatype]
    except KeyError:
        raise BadRequest(f"unsupported datatype {datatype!r}; expected one of {sorted(DATATYPES)}") from None


def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype name for a numpy dtype (object arrays are BYTES)."""
    if dtype == np.dtype(object) or dtype.kind in ("S", "U"):
        return BYTES
    try:
        return _DATATYPE_BY_NUMPY[dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype]
    except KeyError:
        raise BadRequest(f"numpy dtype {dtype} has no V2 datatype") from None


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    """Number of elements in a tensor of ``shape``."""
    count = 1
    for dim in shape:
        count *= dim
    return count


def encode_bytes_elements(items: list[bytes]) -> bytes:
    """Serialize BYTES elements as the protocol's length-prefixed sequence."""
    parts: list[bytes] = []
    for item in items:
        parts.append(_LENGTH_PREFIX.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def decode_bytes_elements(buffer: bytes | memoryview, count: int) -> list[bytes]:
    """Parse ``count`` length-prefixed BYTES elements that must fill ``buffer`` exactly."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + _LENGTH_PREFIX.size > len(view):
            raise BadRequest("BYTES tensor data ends inside a length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(view):
            raise BadRequest("BYTES tensor element runs past the end of its data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise BadRequest(f"BYTES tensor data has {len(view) - offset} bytes beyond its {count} elements")
    return items
