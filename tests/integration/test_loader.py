"""``load_model`` against a real sqlite MLflow registry: what loads, and what is rejected and why."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tandem.common.errors import NotFound
from tandem.worker.loader import CandidateRejected, ModelRef, ModelSource, build_model, load_model
from tests.support.registry import TinyModel, register_model, tensor_signature

CPU = torch.device("cpu")
FP32 = np.dtype(np.float32)


class Scaled(torch.nn.Module):
    """Multiplies by ``factor`` (NaN makes a model that answers NaN) and keeps ``width`` columns."""

    def __init__(self, factor: float = 1.0, width: int = 2, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.factor, self.width, self.dtype = factor, width, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, : self.width] * self.factor).to(self.dtype)


class PastTheCaches(torch.nn.Module):
    """Sleeps 1 ms a call plus 0.2 ms a row up to 8 rows, and 3 ms a row past 8: slower per row past 8 rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        time.sleep(0.001 + 0.0002 * min(rows, 8) + 0.003 * max(0, rows - 8))
        return x[:, :2]


class Broken(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model cannot run")


def register(
    tiny: TinyModel,
    name: str,
    module: torch.nn.Module,
    *,
    in_shape: tuple[int, ...] = (-1, 4),
    signed: bool = True,
    with_example: bool = True,
    aliases: tuple[str, ...] = ("champion",),
) -> str:
    signature = tensor_signature({"x": (FP32, in_shape)}, {"y": (FP32, (-1, 2))})
    example = np.ones((2, 4), np.float32) if with_example else None
    return register_model(
        tiny.registry, name, module, signature=signature if signed else None, input_example=example, aliases=aliases
    )


def test_loads_by_alias_and_by_version(tiny_model: TinyModel) -> None:
    model = load_model(tiny_model.registry.uri, tiny_model.ref, CPU)
    assert (model.name, model.version, model.aliases, model.device) == ("tiny", "1", ["champion"], CPU)
    assert model.nbytes == (4 * 2 + 2) * 4  # weight and bias, float32
    assert model.describe()["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert load_model(tiny_model.registry.uri, "tiny/1", CPU).version == "1"


@pytest.mark.parametrize("ref", ["tiny@nope", "tiny/9", "missing@champion"])
def test_unknown_references_are_not_found(tiny_model: TinyModel, ref: str) -> None:
    with pytest.raises(NotFound, match=f"the registry has no model '{ref}'"):
        load_model(tiny_model.registry.uri, ref, CPU)


@pytest.mark.parametrize("ref", ["tiny", "tiny@", "@champion", "tiny/1/2", "a@b/c"])
def test_malformed_references_are_refused(ref: str) -> None:
    with pytest.raises(ValueError, match="NAME@ALIAS or NAME/VERSION"):
        ModelRef.parse(ref)


def test_a_model_without_an_input_example_warms_up_on_zeros(tiny_model: TinyModel) -> None:
    register(tiny_model, "plain", Scaled(), with_example=False, aliases=("live",))
    assert load_model(tiny_model.registry.uri, "plain@live", CPU).version == "1"


@pytest.mark.parametrize(
    ("name", "module", "options", "reason"),
    [
        ("nan", Scaled(float("nan")), {}, "output 'y' is not finite on the warm-up input"),
        ("wide", Scaled(width=3), {}, r"output 'y' has shape \[2, 3\] for 2 rows; the signature says \[-1, 2\]"),
        ("double", Scaled(dtype=torch.float64), {}, "output 'y' is FP64; the signature says FP32"),
        ("broken", Broken(), {}, "warm-up failed: RuntimeError: this model cannot run"),
        ("ragged", Scaled(), {"in_shape": (-1, -1), "with_example": False}, "variable non-batch dimension"),
        ("unsigned", Scaled(), {"signed": False, "with_example": False}, "the model has no signature"),
    ],
)
def test_unservable_versions_are_rejected(
    tiny_model: TinyModel, name: str, module: torch.nn.Module, options: dict[str, object], reason: str
) -> None:
    register(tiny_model, name, module, **options)  # type: ignore[arg-type]
    with pytest.raises(CandidateRejected, match=reason):
        load_model(tiny_model.registry.uri, f"{name}@champion", CPU)


def test_a_model_slower_per_row_past_a_batch_size_is_capped_there_by_its_load_time_profile(
    tiny_model: TinyModel,
) -> None:
    register(tiny_model, "knee", PastTheCaches())
    with ModelSource(tiny_model.registry.uri).fetch("knee@champion") as candidate:
        profiled = build_model(candidate, CPU, max_batch_rows=256, profile_s=1.0)
        unprofiled = build_model(candidate, CPU, max_batch_rows=256)
    assert profiled.batch_cap == 8
    assert profiled.describe()["batch_cap"] == 8
    assert unprofiled.batch_cap is None
    assert "batch_cap" not in unprofiled.describe()
