"""Batch execution: check requests against a model's signature, run a batch, split the outputs.

``validate`` and ``select_outputs`` run on the event loop thread when a request is admitted. ``run_batch`` and
``retire`` run on the single inference thread: they are the only code that touches a model's module and device
memory. Nothing here knows about sockets or the queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tandem.common.datatypes import datatype_of
from tandem.common.errors import BadRequest, InternalError
from tandem.common.wire import Tensor

if TYPE_CHECKING:
    from tandem.worker.loader import LoadedModel

BF16 = "BF16"

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    BF16: torch.bfloat16,
}


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _names_text(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def validate(model: LoadedModel, inputs: list[Tensor]) -> int:
    """Check a request's tensors against ``model``'s input signature; return the request's rows.

    Raises ``BadRequest`` naming the problem: missing or unexpected inputs, a wrong datatype, a wrong rank or
    non-batch dimension, inputs that disagree on the batch dimension, or no rows at all.
    """
    given = [t.name for t in inputs]
    expected = [spec.name for spec in model.inputs]
    duplicated = sorted({name for name in given if given.count(name) > 1})
    if duplicated:
        raise BadRequest(f"input {_names_text(duplicated)} given more than once")
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing input {_names_text(missing)}")
        if unexpected:
            problems.append(f"unexpected input {_names_text(unexpected)}")
        raise BadRequest(f"{'; '.join(problems)} (model {model.name!r} takes {_names_text(expected)})")
    by_name = {t.name: t for t in inputs}
    rows: int | None = None
    first = ""
    for spec in model.inputs:
        tensor = by_name[spec.name]
        if tensor.datatype != spec.datatype:
            raise BadRequest(f"input {spec.name!r} must be {spec.datatype}, got {tensor.datatype}")
        shape = tensor.shape
        if len(shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape[1:], shape[1:], strict=True)
        ):
            raise BadRequest(f"input {spec.name!r} must have shape {_shape_text(spec.shape)}, got {_shape_text(shape)}")
        if rows is None:
            rows, first = shape[0], spec.name
        elif shape[0] != rows:
            raise BadRequest(
                f"inputs disagree on the batch dimension: {first!r} has {rows} rows, {spec.name!r} has {shape[0]}"
            )
    if not rows:
        raise BadRequest("a request must carry at least one row")
    return rows


def select_outputs(model: LoadedModel, names: list[str] | None) -> list[int] | None:
    """Indexes of the requested outputs in signature order (None: all); BadRequest for an unknown name."""
    if names is None:
        return None
    declared = [spec.name for spec in model.outputs]
    unknown = [name for name in names if name not in declared]
    if unknown:
        raise BadRequest(f"model {model.name!r} has no output {_names_text(unknown)}; it has {_names_text(declared)}")
    return [declared.index(name) for name in names]


def tensor_of(name: str, datatype: str, array: np.ndarray) -> Tensor:
    """A wire tensor over ``array`` (not copied when C-contiguous), labelled ``datatype`` (BF16 is uint16 here)."""
    return Tensor.from_numpy(name, array, datatype)


def _to_device(model: LoadedModel, datatype: str, parts: list[np.ndarray]) -> torch.Tensor:
    """Concatenate the requests' arrays into one host tensor (one copy), then place it on the model's device.

    On CUDA the host tensor is pinned so the copy to the device can be asynchronous (``non_blocking``).
    """
    rows = sum(part.shape[0] for part in parts)
    shape = (rows, *parts[0].shape[1:])
    # BF16 travels as 2-byte words; numpy cannot hold bfloat16, so copy as int16 and reinterpret the bits.
    storage = torch.int16 if datatype == BF16 else TORCH_DTYPES[datatype]
    if datatype == BF16:
        parts = [part.view(np.int16) for part in parts]
    on_cuda = model.device.type == "cuda"
    host = torch.empty(shape, dtype=storage, pin_memory=on_cuda)
    np.concatenate(parts, axis=0, out=host.numpy())
    if datatype == BF16:
        host = host.view(torch.bfloat16)
    if not on_cuda:
        return host
    return host.to(model.device, non_blocking=True)


def _output_list(model: LoadedModel, result: Any) -> list[torch.Tensor]:
    """The module's result as one tensor per declared output, in signature order."""
    if isinstance(result, torch.Tensor):
        values = [result]
    elif isinstance(result, dict):
        missing = [spec.name for spec in model.outputs if spec.name not in result]
        if missing:
            raise InternalError(f"model {model.name!r} returned no output {_names_text(missing)}")
        values = [result[spec.name] for spec in model.outputs]
    elif isinstance(result, (tuple, list)):
        values = list(result)
    else:
        raise InternalError(f"model {model.name!r} returned a {type(result).__name__}, not tensors")
    if len(values) != len(model.outputs):
        raise InternalError(
            f"model {model.name!r} returned {len(values)} outputs; its signature declares {len(model.outputs)}"
        )
    for spec, value in zip(model.outputs, values, strict=True):
        if not isinstance(value, torch.Tensor):
            raise InternalError(f"output {spec.name!r} is a {type(value).__name__}, not a tensor")
    return values


def _to_numpy(value: torch.Tensor) -> np.ndarray:
    """A C-contiguous host array of ``value`` (bfloat16 as its raw ``uint16`` words)."""
    value = value.detach().to("cpu")
    if value.dtype == torch.bfloat16:
        value = value.view(torch.int16)
        return np.ascontiguousarray(value.numpy()).view(np.uint16)
    return np.ascontiguousarray(value.numpy())


def run_batch(model: LoadedModel, batch: list[list[Tensor]]) -> list[list[Tensor]]:
    """Run ``batch`` (each request's validated input tensors) through ``model`` as one forward pass.

    Runs on the inference thread. The requests' arrays are concatenated along dim 0 per input, the module is
    called with the inputs in signature order under ``torch.inference_mode()``, and each output is split back
    into row slices: result ``i`` holds exactly request ``i``'s rows of every declared output, in signature
    order. Raises ``InternalError`` when the module's result does not match its signature.
    """
    counts = [request[0].shape[0] for request in batch]
    total = sum(counts)
    inputs = []
    for spec in model.inputs:
        parts = [next(t for t in request if t.name == spec.name).to_numpy() for request in batch]
        inputs.append(_to_device(model, spec.datatype, parts))
    with torch.inference_mode():
        result = model.module(*inputs)
    arrays = []
    for spec, value in zip(model.outputs, _output_list(model, result), strict=True):
        array = _to_numpy(value)
        if array.ndim == 0 or array.shape[0] != total:
            raise InternalError(
                f"output {spec.name!r} has shape {_shape_text(array.shape)} for a batch of {total} rows"
            )
        arrays.append((spec.name, value.dtype, array))
    outputs: list[list[Tensor]] = []
    start = 0
    for count in counts:
        stop = start + count
        outputs.append([_sliced(name, dtype, array[start:stop]) for name, dtype, array in arrays])
        start = stop
    return outputs


def _sliced(name: str, dtype: torch.dtype, rows: np.ndarray) -> Tensor:
    # A row slice of a C-contiguous array is itself contiguous, so no copy happens here.
    return tensor_of(name, BF16 if dtype == torch.bfloat16 else datatype_of(rows.dtype), rows)


def retire(model: LoadedModel) -> None:
    """Free a model that is no longer served. Run it on the inference thread, after the model's last batch."""
    device = model.device
    del model.module
    if device.type == "cuda":
        torch.cuda.empty_cache()
