"""Request validation and batch execution in ``tandem.worker.runner``, with tiny in-process torch modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.common.errors import BadRequest, InternalError
from tandem.common.wire import Tensor
from tandem.worker.loader import LoadedModel, TensorSignature
from tandem.worker.runner import retire, run_batch, select_outputs, tensor_of, validate

FEATURES = 17


def make_model(
    module: torch.nn.Module, inputs: list[TensorSignature], outputs: list[TensorSignature], name: str = "ranker"
) -> LoadedModel:
    return LoadedModel(
        name=name,
        version="1",
        aliases=[],
        module=module,
        device=torch.device("cpu"),
        inputs=inputs,
        outputs=outputs,
        nbytes=0,
    )


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class Difference(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b


class Several(torch.nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor) -> object:
        total, double = x.sum(dim=1, keepdim=True), x * 2
        return {"total": total, "double": double} if self.as_dict else (double, total)


@pytest.fixture
def ranker() -> LoadedModel:
    return make_model(
        Double(),
        [TensorSignature("features", "FP32", (-1, FEATURES))],
        [TensorSignature("scores", "FP32", (-1, FEATURES))],
    )


@pytest.fixture
def pair() -> LoadedModel:
    return make_model(
        Difference(),
        [TensorSignature("a", "FP32", (-1, 3)), TensorSignature("b", "FP32", (-1, 3))],
        [TensorSignature("d", "FP32", (-1, 3))],
        name="pair",
    )


def features(rows: int, start: float = 0.0, dtype: type = np.float32) -> Tensor:
    values = np.arange(start, start + rows * FEATURES, dtype=dtype).reshape(rows, FEATURES)
    return Tensor.from_numpy("features", values)


def test_validate_returns_the_rows(ranker: LoadedModel) -> None:
    assert validate(ranker, [features(5)]) == 5


def test_validate_names_a_missing_input(pair: LoadedModel) -> None:
    a = Tensor.from_numpy("a", np.zeros((2, 3), np.float32))
    with pytest.raises(BadRequest) as caught:
        validate(pair, [a])
    assert caught.value.message == "missing input 'b' (model 'pair' takes 'a', 'b')"


def test_validate_names_an_unexpected_input(ranker: LoadedModel) -> None:
    extra = Tensor.from_numpy("extra", np.zeros((2, 1), np.float32))
    with pytest.raises(BadRequest) as caught:
        validate(ranker, [features(2), extra])
    assert caught.value.message == "unexpected input 'extra' (model 'ranker' takes 'features')"


def test_validate_names_missing_and_unexpected_together(ranker: LoadedModel) -> None:
    wrong = Tensor.from_numpy("feature", np.zeros((2, FEATURES), np.float32))
    with pytest.raises(BadRequest, match="missing input 'features'; unexpected input 'feature'"):
        validate(ranker, [wrong])


def test_validate_rejects_a_repeated_input(ranker: LoadedModel) -> None:
    with pytest.raises(BadRequest, match="input 'features' given more than once"):
        validate(ranker, [features(1), features(1)])


def test_validate_checks_the_datatype(ranker: LoadedModel) -> None:
    with pytest.raises(BadRequest) as caught:
        validate(ranker, [features(2, dtype=np.int64)])
    assert caught.value.message == "input 'features' must be FP32, got INT64"


def test_validate_checks_non_batch_dims(ranker: LoadedModel) -> None:
    wrong = Tensor.from_numpy("features", np.zeros((2, 3), np.float32))
    with pytest.raises(BadRequest) as caught:
        validate(ranker, [wrong])
    assert caught.value.message == "input 'features' must have shape [-1, 17], got [2, 3]"


def test_validate_checks_the_rank(ranker: LoadedModel) -> None:
    flat = Tensor.from_numpy("features", np.zeros(FEATURES, np.float32))
    with pytest.raises(BadRequest, match=r"input 'features' must have shape \[-1, 17\], got \[17\]"):
        validate(ranker, [flat])


def test_validate_accepts_variable_dims() -> None:
    model = make_model(Double(), [TensorSignature("x", "FP32", (-1, -1))], [TensorSignature("y", "FP32", (-1, -1))])
    assert validate(model, [Tensor.from_numpy("x", np.zeros((3, 9), np.float32))]) == 3


def test_validate_requires_inputs_to_agree_on_rows(pair: LoadedModel) -> None:
    a = Tensor.from_numpy("a", np.zeros((2, 3), np.float32))
    b = Tensor.from_numpy("b", np.zeros((4, 3), np.float32))
    with pytest.raises(BadRequest) as caught:
        validate(pair, [a, b])
    assert caught.value.message == "inputs disagree on the batch dimension: 'a' has 2 rows, 'b' has 4"


def test_validate_rejects_zero_rows(ranker: LoadedModel) -> None:
    with pytest.raises(BadRequest, match="at least one row"):
        validate(ranker, [Tensor("features", "FP32", (0, FEATURES), b"")])


def test_select_outputs(ranker: LoadedModel) -> None:
    assert select_outputs(ranker, None) is None
    assert select_outputs(ranker, ["scores"]) == [0]
    with pytest.raises(BadRequest) as caught:
        select_outputs(ranker, ["logits"])
    assert caught.value.message == "model 'ranker' has no output 'logits'; it has 'scores'"


def test_run_batch_gives_each_request_exactly_its_rows() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 2).eval()
    model = make_model(linear, [TensorSignature("x", "FP32", (-1, 4))], [TensorSignature("y", "FP32", (-1, 2))])
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((rows, 4), dtype=np.float32) for rows in (1, 3, 2, 5)]
    results = run_batch(model, [[Tensor.from_numpy("x", array)] for array in arrays])
    assert len(results) == len(arrays)
    for array, outputs in zip(arrays, results, strict=True):
        (y,) = outputs
        assert (y.name, y.datatype, y.shape) == ("y", "FP32", (array.shape[0], 2))
        with torch.inference_mode():
            expected = linear(torch.from_numpy(array)).numpy()
        np.testing.assert_allclose(y.to_numpy(), expected, rtol=1e-6, atol=1e-6)


def test_run_batch_splits_exactly(ranker: LoadedModel) -> None:
    requests = [[features(rows, start=1000.0 * index)] for index, rows in enumerate((2, 1, 4))]
    results = run_batch(ranker, requests)
    for request, (scores,) in zip(requests, results, strict=True):
        assert scores.name == "scores"
        np.testing.assert_array_equal(scores.to_numpy(), request[0].to_numpy() * 2)


def test_run_batch_passes_inputs_in_signature_order(pair: LoadedModel) -> None:
    a = np.full((2, 3), 5.0, np.float32)
    b = np.ones((2, 3), np.float32)
    # The request lists b first; the module must still be called as module(a, b).
    ((d,),) = run_batch(pair, [[Tensor.from_numpy("b", b), Tensor.from_numpy("a", a)]])
    np.testing.assert_array_equal(d.to_numpy(), a - b)


@pytest.mark.parametrize("as_dict", [True, False], ids=["dict", "tuple"])
def test_run_batch_with_several_outputs(as_dict: bool) -> None:
    model = make_model(
        Several(as_dict),
        [TensorSignature("x", "FP32", (-1, 3))],
        [TensorSignature("double", "FP32", (-1, 3)), TensorSignature("total", "FP32", (-1, 1))],
    )
    first = np.arange(3, dtype=np.float32).reshape(1, 3)
    second = np.arange(6, dtype=np.float32).reshape(2, 3) + 10
    results = run_batch(model, [[Tensor.from_numpy("x", first)], [Tensor.from_numpy("x", second)]])
    for array, (double, total) in zip((first, second), results, strict=True):
        assert (double.name, total.name) == ("double", "total")
        np.testing.assert_array_equal(double.to_numpy(), array * 2)
        np.testing.assert_array_equal(total.to_numpy(), array.sum(axis=1, keepdims=True))


def test_run_batch_round_trips_bfloat16() -> None:
    model = make_model(Double(), [TensorSignature("x", "BF16", (-1, 2))], [TensorSignature("y", "BF16", (-1, 2))])
    values = torch.tensor([[1.5, -2.0], [0.25, 3.0]], dtype=torch.bfloat16)
    words = values.view(torch.int16).numpy().view(np.uint16)
    ((y,),) = run_batch(model, [[tensor_of("x", "BF16", words)]])
    assert (y.datatype, y.shape) == ("BF16", (2, 2))
    out = torch.from_numpy(y.to_numpy().view(np.int16)).view(torch.bfloat16)
    assert torch.equal(out, values * 2)


def test_run_batch_takes_integer_inputs() -> None:
    class Lookup(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(10, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.table(ids).sum(dim=1)

    model = make_model(Lookup(), [TensorSignature("ids", "INT64", (-1, 3))], [TensorSignature("v", "FP32", (-1, 2))])
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    ((v,),) = run_batch(model, [[Tensor.from_numpy("ids", ids)]])
    assert v.shape == (2, 2)


def test_run_batch_rejects_a_result_that_does_not_match_the_signature(ranker: LoadedModel) -> None:
    ranker.outputs.append(TensorSignature("extra", "FP32", (-1, 1)))
    with pytest.raises(InternalError, match="returned 1 outputs; its signature declares 2"):
        run_batch(ranker, [[features(1)]])


def test_run_batch_rejects_outputs_with_the_wrong_rows() -> None:
    class Pooled(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=0, keepdim=True)

    model = make_model(Pooled(), [TensorSignature("x", "FP32", (-1, 2))], [TensorSignature("y", "FP32", (-1, 2))])
    with pytest.raises(InternalError, match=r"output 'y' has shape \[1, 2\] for a batch of 3 rows"):
        run_batch(model, [[Tensor.from_numpy("x", np.ones((3, 2), np.float32))]])


def test_retire_drops_the_module(ranker: LoadedModel) -> None:
    retire(ranker)
    assert not hasattr(ranker, "module")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_run_batch_on_cuda_uses_pinned_memory_and_returns_host_arrays() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 2).to(device).eval()
    model = make_model(linear, [TensorSignature("x", "FP32", (-1, 4))], [TensorSignature("y", "FP32", (-1, 2))])
    model.device = device
    arrays = [np.full((rows, 4), float(rows), np.float32) for rows in (1, 3)]
    results = run_batch(model, [[Tensor.from_numpy("x", array)] for array in arrays])
    for array, (y,) in zip(arrays, results, strict=True):
        with torch.inference_mode():
            expected = linear(torch.from_numpy(array).to(device)).cpu().numpy()
        np.testing.assert_allclose(y.to_numpy(), expected, rtol=1e-5, atol=1e-5)
    retire(model)
