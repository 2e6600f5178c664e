"""Turn a model reference into a loaded, warmed, checked model, or raise ``CandidateRejected``.

Two steps, so a hot swap can check memory in between: ``ModelSource.fetch`` resolves a reference in the registry
and downloads that version's files (a ``Candidate``, whose size on disk is known); ``build_model`` deserializes
it onto the device, warms it up on its registered input example and checks the outputs (finite, of the declared
datatype and shape). ``load_model`` does both. ``available_bytes`` says how much memory a second copy could take.

Everything here blocks (registry calls, artifact download, deserialization, a warm-up forward pass): call it on
a loader thread (``asyncio.to_thread``), never on the event loop. MLflow's exceptions are translated here and
nowhere else: an unknown model, alias or version becomes ``NotFound``; a version that cannot serve (no tensor
signature, fails to deserialize, fails its warm-up, returns non-finite or mis-shaped outputs) becomes
``CandidateRejected``; registry or network failures propagate unchanged, since they say nothing about the
version and a caller may retry.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

# Telemetry must be off before mlflow is imported (an explicit setting in the environment wins).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from tandem.common.datatypes import BYTES, datatype_of, numpy_dtype
from tandem.common.drift import BadReference, find_reference
from tandem.common.errors import BadRequest, NotFound, TandemError
from tandem.common.wire import Tensor
from tandem.worker import batch_profile
from tandem.worker.runner import BF16, retire, run_batch, tensor_of, validate
from tandem.worker.stats import BatchStats

if TYPE_CHECKING:
    from tandem.common.settings import WorkerSettings

log = logging.getLogger(__name__)

PLATFORM = "pytorch"
WARMUP_ROWS = 1
"""Rows of the zero batch used to warm up a model registered without an input example."""
FLOAT_DATATYPES = frozenset(["FP16", "FP32", "FP64"])
BF16_EXPONENT_MASK = 0x7F80
"""A bfloat16 word with all exponent bits set is an infinity or a NaN."""
_NOT_FOUND_CODES = frozenset(["RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"])
MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KIB = 1024


class CandidateRejected(TandemError):
    """A model version that cannot be served; ``reason`` says why. The registry poller remembers it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """One declared input or output: dims of -1 are variable; dim 0 is always the batch dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> dict[str, Any]:
        """The map gateways receive."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(slots=True, eq=False)
class LoadedModel:
    """A model version on its device, warmed and checked, with its signature.

    ``module`` is used only on the inference thread; ``stats`` only on the event loop thread.
    """

    name: str
    version: str
    aliases: list[str]
    module: torch.nn.Module
    device: torch.device
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]
    nbytes: int
    stats: BatchStats = field(default_factory=BatchStats)
    drift_reference: dict[str, Any] | None = None
    """The version's training distribution (``common/drift.py``, a few KB), when it was registered with one."""
    batch_cap: int | None = None
    """Most rows worth batching, from the load-time profile (``worker/batch_profile.py``); None: no cap."""

    @property
    def key(self) -> tuple[str, str]:
        """(name, version): the unit of batching and of hot-swap."""
        return (self.name, self.version)

    def describe(self) -> dict[str, Any]:
        """The metadata map sent to gateways in each pong."""
        return {
            "name": self.name,
            "version": self.version,
            "aliases": list(self.aliases),
            "platform": PLATFORM,
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
            "stats": self.stats.snapshot(),
            **({"batch_cap": self.batch_cap} if self.batch_cap is not None else {}),
            **({"drift_reference": self.drift_reference} if self.drift_reference is not None else {}),
        }


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A configured model: ``NAME@ALIAS`` or ``NAME/VERSION``."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        """Parse ``ref``; ValueError when it is neither form."""
        if "@" in ref:
            name, _, alias = ref.partition("@")
            if name and alias and "/" not in ref:
                return cls(name, alias=alias)
        elif "/" in ref:
            name, _, version = ref.partition("/")
            if name and version and "/" not in version:
                return cls(name, version=version)
        raise ValueError(f"model reference {ref!r} must be NAME@ALIAS or NAME/VERSION")

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


def resolve_device(setting: str) -> torch.device:
    """The device for ``WorkerSettings.device``: 'auto' is CUDA when available, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@dataclass(slots=True)
class Candidate:
    """A registered version fetched to local disk and not yet deserialized; ``close()`` deletes the files.

    ``artifact_bytes`` (the files' size on disk) is what a second copy is checked against before it loads.
    """

    name: str
    version: str
    aliases: list[str]
    local: Path
    artifact_bytes: int
    scratch: tempfile.TemporaryDirectory[str]

    def close(self) -> None:
        """Delete the downloaded files."""
        self.scratch.cleanup()

    def __enter__(self) -> Candidate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ModelSource:
    """The MLflow Model Registry as a worker sees it. Every method blocks: call it on a loader thread.

    This class and ``load_model`` are the only code that calls MLflow; its exceptions are translated here (see
    the module docstring). One client is made on first use and shared by the threads that call in.
    """

    def __init__(self, registry_uri: str) -> None:
        self.registry_uri = registry_uri
        self._client: mlflow.MlflowClient | None = None
        self._lock = threading.Lock()

    def _registry(self) -> mlflow.MlflowClient:
        with self._lock:
            if self._client is None:
                uri = self.registry_uri
                self._client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
            return self._client

    def version_of(self, name: str, alias: str) -> str:
        """The version ``name@alias`` points to now; ``NotFound`` when the model or alias does not exist."""
        return str(self._found(ModelRef(name, alias=alias)).version)

    def fetch(self, ref: ModelRef | str) -> Candidate:
        """Resolve ``ref`` and download that version's artifacts into a scratch directory."""
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        found = self._found(parsed)
        version = str(found.version)
        client = self._registry()
        # The client knows this registry; resolving ``models:/`` URIs would consult mlflow's global URIs instead.
        source = client.get_model_version_download_uri(parsed.name, version)
        scratch = tempfile.TemporaryDirectory(prefix="tandem-model-")
        try:
            # One download serves the metadata, the input example and the weights.
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=scratch.name, tracking_uri=self.registry_uri
                )
            )
        except BaseException:
            scratch.cleanup()
            raise
        size = sum(path.stat().st_size for path in local.rglob("*") if path.is_file())
        return Candidate(parsed.name, version, sorted(found.aliases or []), local, size, scratch)

    def _found(self, ref: ModelRef) -> Any:
        client = self._registry()
        try:
            if ref.alias is not None:
                return client.get_model_version_by_alias(ref.name, ref.alias)
            return client.get_model_version(ref.name, str(ref.version))
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND_CODES:
                raise NotFound(f"the registry has no model {str(ref)!r}: {exc.message}") from None
            raise


def load_model(registry_uri: str, ref: str, device: torch.device) -> LoadedModel:
    """Resolve ``ref`` in the registry, load that version onto ``device``, warm it up and check it.

    Blocking; runs on a loader thread. Raises ``NotFound`` for an unknown model, alias or version and
    ``CandidateRejected`` for a version that cannot be served.
    """
    with ModelSource(registry_uri).fetch(ref) as candidate:
        return build_model(candidate, device)


def build_model(
    candidate: Candidate, device: torch.device, *, max_batch_rows: int = 1, profile_s: float = 0.0
) -> LoadedModel:
    """Deserialize a fetched version onto ``device``, warm it up on its input example and check its outputs.

    Then, given ``profile_s``, profile its batches up to ``max_batch_rows`` rows for at most that long and set
    ``batch_cap`` (``worker/batch_profile.py``).

    Blocking; runs on a loader thread, beside whatever model is live on ``device``. Raises ``CandidateRejected``
    for a version that cannot be served; such a version is freed before this returns.
    """
    # Imported on first use: importing mlflow.pytorch calls logging.basicConfig(level=ERROR), which would
    # pre-empt the entry point's own logging set-up.
    from mlflow import pytorch as mlflow_pytorch

    started = time.perf_counter()
    name, version, local = candidate.name, candidate.version, str(candidate.local)
    try:
        metadata = Model.load(local)
    except Exception as exc:  # a missing or malformed MLmodel file: mlflow raises several types
        raise CandidateRejected(f"cannot read the model's metadata: {type(exc).__name__}: {exc}") from exc
    inputs, outputs = _signature(metadata)
    example = _input_example(metadata, local)
    reference = _drift_reference(candidate)
    try:
        module = mlflow_pytorch.load_model(local, map_location=device)
    except Exception as exc:  # deserializing runs arbitrary code from the artifact
        raise CandidateRejected(f"cannot load {name}/{version}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise CandidateRejected(f"{name}/{version} is a {type(module).__name__}, not a torch module")
    module = module.to(device).eval()
    model = LoadedModel(
        name=name,
        version=version,
        aliases=list(candidate.aliases),
        module=module,
        device=device,
        inputs=inputs,
        outputs=outputs,
        nbytes=sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers())),
        drift_reference=reference,
    )
    del module  # ``model`` holds the only reference, so ``retire`` can free it
    warm_up_started = time.perf_counter()
    try:
        tensors = _warm_up(model, example)
    except CandidateRejected:
        retire(model)  # never served: free its device memory now rather than when the traceback goes
        raise
    _profile_batches(model, tensors, max_batch_rows, profile_s, time.perf_counter() - warm_up_started)
    log.info(
        "loaded %s version %s on %s (%d bytes) in %.2f s",
        model.name,
        model.version,
        device,
        model.nbytes,
        time.perf_counter() - started,
    )
    return model


def model_builder(settings: WorkerSettings) -> Callable[[Candidate, torch.device], LoadedModel]:
    """``build_model`` with the settings' batch profile."""
    return functools.partial(build_model, max_batch_rows=settings.max_batch_size, profile_s=settings.batch_profile_s)


def available_bytes(device: torch.device) -> int:
    """Memory a new model could take on ``device`` right now.

    CUDA: the driver's free memory plus what torch's caching allocator holds unused. CPU: ``MemAvailable`` from
    ``/proc/meminfo``, capped by the cgroup (v2) limit when the worker runs in a container.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return host_available_bytes()


def host_available_bytes(meminfo: Path = MEMINFO, cgroup: Path = CGROUP_ROOT) -> int:
    """``MemAvailable`` in bytes, capped by the cgroup v2 headroom (``memory.max - memory.current``) if any."""
    available = None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * KIB
            break
    if available is None:
        raise RuntimeError(f"{meminfo} has no MemAvailable line")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        current = int((cgroup / "memory.current").read_text())
    except (OSError, ValueError):
        return available
    if limit == "max":
        return available
    return min(available, max(0, int(limit) - current))


def _specs(schema: Any, role: str) -> list[TensorSignature]:
    if schema is None or not schema.is_tensor_spec():
        raise CandidateRejected(f"the signature's {role}s must be tensors (mlflow TensorSpec)")
    specs = []
    for index, spec in enumerate(schema.inputs):
        name = spec.name or f"{role}_{index}"
        shape = tuple(int(d) for d in spec.shape)
        try:
            datatype = datatype_of(np.dtype(spec.type))
        except BadRequest as exc:
            raise CandidateRejected(f"{role} {name!r}: {exc.message}") from None
        if not shape or shape[0] != -1:
            raise CandidateRejected(f"{role} {name!r} must have a variable batch dimension first, got {shape}")
        specs.append(TensorSignature(name, datatype, shape))
    return specs


def _signature(metadata: Model) -> tuple[list[TensorSignature], list[TensorSignature]]:
    signature = metadata.signature
    if signature is None:
        raise CandidateRejected("the model has no signature")
    inputs = _specs(signature.inputs, "input")
    outputs = _specs(signature.outputs, "output")
    for spec in inputs:
        if spec.datatype == BYTES:
            raise CandidateRejected(f"input {spec.name!r} is BYTES, which a torch module cannot take")
        if -1 in spec.shape[1:]:
            # Requests are concatenated along dim 0, which needs every other dim fixed.
            raise CandidateRejected(f"input {spec.name!r} has a variable non-batch dimension: {spec.shape}")
    return inputs, outputs


def _drift_reference(candidate: Candidate) -> dict[str, Any] | None:
    """The version's drift reference, if it has one; a malformed one is logged and ignored (it only feeds metrics)."""
    try:
        return find_reference(candidate.local)
    except BadReference as exc:
        log.warning("%s version %s: drift reference ignored: %s", candidate.name, candidate.version, exc)
        return None


def _input_example(metadata: Model, local: str) -> Any:
    try:
        return metadata.load_input_example(local)
    except Exception as exc:  # mlflow parses several formats and raises several types
        raise CandidateRejected(f"cannot read the input example: {type(exc).__name__}: {exc}") from exc


def _example_arrays(model: LoadedModel, example: Any) -> list[np.ndarray]:
    """The warm-up input arrays: the registered example, else a zero batch of ``WARMUP_ROWS`` rows."""
    if example is None:
        return [np.zeros((WARMUP_ROWS, *spec.shape[1:]), dtype=numpy_dtype(spec.datatype)) for spec in model.inputs]
    if not isinstance(example, dict):
        if len(model.inputs) != 1:
            raise CandidateRejected("the input example is one array but the model takes several inputs")
        example = {model.inputs[0].name: example}
    arrays = []
    for spec in model.inputs:
        if spec.name not in example:
            raise CandidateRejected(f"the input example has no input {spec.name!r}")
        value = np.asarray(example[spec.name])
        if spec.datatype == BF16:
            value = torch.tensor(value, dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        arrays.append(np.ascontiguousarray(value, dtype=numpy_dtype(spec.datatype)))
    return arrays


def _warm_up(model: LoadedModel, example: Any) -> list[Tensor]:
    """Run one batch through the serving path and check the outputs against the signature; returns its inputs."""
    tensors = [
        tensor_of(spec.name, spec.datatype, array)
        for spec, array in zip(model.inputs, _example_arrays(model, example), strict=True)
    ]
    try:
        rows = validate(model, tensors)
    except BadRequest as exc:
        raise CandidateRejected(f"the input example does not match the signature: {exc.message}") from None
    try:
        (outputs,) = run_batch(model, [tensors])
    except Exception as exc:  # the module's own code may raise anything; that rejects the version
        raise CandidateRejected(f"warm-up failed: {type(exc).__name__}: {exc}") from exc
    for spec, tensor in zip(model.outputs, outputs, strict=True):
        declared = (rows, *spec.shape[1:])
        if tensor.datatype != spec.datatype:
            raise CandidateRejected(f"output {spec.name!r} is {tensor.datatype}; the signature says {spec.datatype}")
        if len(tensor.shape) != len(declared) or any(
            want not in (-1, got) for want, got in zip(declared, tensor.shape, strict=True)
        ):
            raise CandidateRejected(
                f"output {spec.name!r} has shape {list(tensor.shape)} for {rows} rows; "
                f"the signature says {list(spec.shape)}"
            )
        if not _finite(tensor.datatype, np.frombuffer(tensor.data, dtype=numpy_dtype(tensor.datatype))):
            raise CandidateRejected(f"output {spec.name!r} is not finite on the warm-up input")
    return tensors


def _profile_batches(
    model: LoadedModel, example: list[Tensor], max_rows: int, budget_s: float, warm_up_s: float
) -> None:
    """Time batches made of the warm-up rows repeated, and cap ``model``'s batches where rows/s falls off."""
    arrays = [tensor.to_numpy() for tensor in example]

    @functools.cache
    def batch_of(rows: int) -> list[Tensor]:
        # Built once a size: each size runs in every pass, and its fastest call should time the model alone.
        tiled = [np.resize(array, (rows, *array.shape[1:])) for array in arrays]  # repeats the example's rows
        return [tensor_of(t.name, t.datatype, a) for t, a in zip(example, tiled, strict=True)]

    def run(rows: int) -> None:
        run_batch(model, [batch_of(rows)])

    seconds = batch_profile.profile(run, max_rows, budget_s, warm_up_s)
    proposed = batch_profile.efficient_rows(seconds)
    confirmed = proposed is not None and batch_profile.confirm(run, proposed, max(seconds))
    model.batch_cap = proposed if confirmed else None
    if seconds:
        if model.batch_cap:
            outcome = f"batches capped at {model.batch_cap} rows"
        elif proposed is not None:
            outcome = f"no cap: {max(seconds)} rows were not slower than {proposed} in paired calls"
        else:
            outcome = "no cap"
        log.info(
            "%s/%s rows/s by batch size: %s; %s",
            model.name,
            model.version,
            ", ".join(f"{rows}: {rows / secs:.0f}" for rows, secs in seconds.items()),
            outcome,
        )


def _finite(datatype: str, values: np.ndarray) -> bool:
    if datatype in FLOAT_DATATYPES:
        return bool(np.isfinite(values).all())
    if datatype == BF16:
        return not bool(((values & BF16_EXPONENT_MASK) == BF16_EXPONENT_MASK).any())
    return True
