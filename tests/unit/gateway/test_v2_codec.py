"""V2 REST body codec: JSON and binary-extension round trips, checked against NVIDIA's own tritonclient."""

from __future__ import annotations

import json
import re
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.common.datatypes import DATATYPES, NUMPY_BY_DATATYPE, element_count, encode_bytes_elements
from tandem.common.errors import BadRequest, PayloadTooLarge
from tandem.common.wire import InferRequest, Tensor, decode, encode
from tandem.gateway.v2_codec import (
    RequestedOutput,
    build_infer_response,
    error_body,
    model_metadata_body,
    parse_infer_request,
    select_outputs,
)

Client = httpclient.InferenceServerClient

SAMPLES: dict[str, np.ndarray] = {
    "FP32": np.array([[0.5, -1.25, 3.0e-8], [1.0e30, 0.0, -7.0]], dtype=np.float32),
    "FP64": np.array([1.0 / 3.0, -2.5e300, 0.0], dtype=np.float64),
    "FP16": np.array([[0.1, -2.0], [65504.0, 6.0e-5]], dtype=np.float16),
    "INT64": np.array([[2**62, -(2**63)], [0, 7]], dtype=np.int64),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "INT8": np.array([[-128, 127, 0]], dtype=np.int8),
    "UINT8": np.array([0, 255, 17], dtype=np.uint8),
    "UINT64": np.array([2**64 - 1, 0], dtype=np.uint64),
    "BOOL": np.array([[True, False], [False, True]], dtype=np.bool_),
    "BYTES": np.array([[b"hello", b""], ["h\u00e9llo w\u00f6rld".encode(), b"x"]], dtype=np.object_),
}


def _request(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()  # stdlib json: integers past 64 bits too


def _values(array: np.ndarray) -> list[Any]:
    """Compare BYTES as bytes whether a client decoded them to str (JSON) or not (binary)."""
    flat = array.reshape(-1).tolist()
    return [x.encode() if isinstance(x, str) else x for x in flat]


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == np.object_:
        assert _values(got) == _values(want)
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def _json_data(array: np.ndarray, *, nested: bool) -> list[Any]:
    if array.dtype == np.object_:  # BYTES travel in JSON as strings
        array = np.vectorize(bytes.decode, otypes=[object])(array)
    return array.tolist() if nested else array.reshape(-1).tolist()


def _client_result(body: bytes, json_length: int | None) -> Any:
    return Client.parse_response_body(body, verbose=False, header_length=json_length)


# ------------------------------------------------------------------------------------- plain JSON bodies


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT64", "INT8", "UINT64", "BOOL", "BYTES"])
def test_json_round_trip(datatype: str, nested: bool) -> None:
    array = SAMPLES[datatype]
    data = _json_data(array, nested=nested)
    body = _request([{"name": "x", "shape": list(array.shape), "datatype": datatype, "data": data}], id="req-1")

    parsed = parse_infer_request(body, None)

    assert parsed.id == "req-1"
    assert parsed.outputs is None
    assert parsed.binary_output_default is False
    [tensor] = parsed.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, array.shape)
    _assert_same(tensor.to_numpy(), array)

    out, json_length = build_infer_response(
        model_name="m",
        model_version="3",
        request_id=parsed.id,
        outputs=[tensor],
        requested=None,
        binary_output_default=False,
    )
    assert json_length is None
    response = orjson.loads(out)
    assert (response["model_name"], response["model_version"], response["id"]) == ("m", "3", "req-1")
    assert response["outputs"][0]["shape"] == list(array.shape)
    _assert_same(_client_result(out, None).as_numpy("x"), array)


def test_response_omits_id_and_version_when_unknown() -> None:
    out, _ = build_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[Tensor.from_numpy("y", np.zeros(2, np.float32))],
        requested=None,
        binary_output_default=False,
    )
    assert orjson.loads(out) == {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [0.0, 0.0]}],
    }


def test_json_int_data_is_accepted_for_float_datatypes_and_empty_tensors() -> None:
    body = _request(
        [
            {"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2.5, -3]},
            {"name": "b", "shape": [0, 4], "datatype": "INT32", "data": []},
            {"name": "c", "shape": [], "datatype": "INT16", "data": [9]},
        ]
    )
    a, b, c = parse_infer_request(body, None).inputs
    np.testing.assert_array_equal(a.to_numpy(), np.array([1.0, 2.5, -3.0], np.float32))
    assert b.to_numpy().shape == (0, 4)
    assert c.to_numpy().item() == 9


def test_bf16_json_input_rounds_to_nearest_even() -> None:
    values = [1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.75, 3.0e38, 1.0e-40, 0.0, -0.0]
    rng = np.random.default_rng(7)
    values += rng.standard_normal(200).astype(np.float32).tolist()
    body = _request([{"name": "h", "shape": [len(values)], "datatype": "BF16", "data": values}])

    [tensor] = parse_infer_request(body, None).inputs

    words = np.frombuffer(tensor.data, dtype="<u2")
    expected = np.array(values, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(words, expected)
    assert words[:3].tolist() == [0x3F80, 0x3F80, 0x3F82]  # ties go to the even word


def test_bf16_output_as_json_reads_back_in_tritonclient() -> None:
    array = np.array([[1.5, -0.125], [3.0e38, 0.0]], dtype=ml_dtypes.bfloat16)
    tensor = Tensor("h", "BF16", array.shape, array.view(np.uint16).tobytes())
    out, json_length = build_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[tensor],
        requested=[RequestedOutput("h", binary=False)],
        binary_output_default=False,
    )
    assert json_length is None
    _assert_same(_client_result(out, None).as_numpy("h"), array)


# ------------------------------------------------------------------------------ binary tensor extension


def _triton_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_request_and_response_round_trip(binary: bool) -> None:
    arrays = dict(SAMPLES)
    if binary:  # tritonclient sends BF16 only as binary
        arrays["BF16"] = np.array([[1.5, -2.0, 0.0078125]], dtype=ml_dtypes.bfloat16)
    inputs = [_triton_input(f"in_{dt.lower()}", arr, dt, binary) for dt, arr in arrays.items()]
    wanted = [httpclient.InferRequestedOutput(f"in_{dt.lower()}", binary_data=binary) for dt in arrays]
    body, json_size = Client.generate_request_body(inputs, outputs=wanted, request_id="abc")
    assert (json_size is not None) == binary

    parsed = parse_infer_request(body, json_size)

    assert parsed.id == "abc"
    assert [o.binary for o in parsed.outputs] == [binary] * len(arrays)
    for tensor, (datatype, array) in zip(parsed.inputs, arrays.items(), strict=True):
        assert (tensor.datatype, tensor.shape) == (datatype, array.shape)
        if datatype == "BF16":
            _assert_same(tensor.to_numpy(), array.view(np.uint16))
        else:
            _assert_same(tensor.to_numpy(), array)
        if binary:  # the body's own bytes, not a copy
            assert isinstance(tensor.data, memoryview) and tensor.data.obj is body

    # Answer with the inputs as outputs, in reverse to check that the requested order wins.
    out, json_length = build_infer_response(
        model_name="echo",
        model_version="1",
        request_id=parsed.id,
        outputs=parsed.inputs[::-1],
        requested=parsed.outputs,
        binary_output_default=parsed.binary_output_default,
    )
    assert (json_length is not None) == binary
    result = _client_result(out, json_length)
    assert result.get_response()["id"] == "abc"
    assert [o["name"] for o in result.get_response()["outputs"]] == [o.name() for o in wanted]
    for datatype, array in arrays.items():
        _assert_same(result.as_numpy(f"in_{datatype.lower()}"), array)


def test_tritonclient_defaults_send_binary_inputs_and_ask_binary_outputs() -> None:
    array = SAMPLES["FP32"]
    inp = httpclient.InferInput("x", list(array.shape), "FP32")
    inp.set_data_from_numpy(array)  # default: binary_data=True
    body, json_size = Client.generate_request_body([inp])  # default: outputs=None, request_id=""

    header = orjson.loads(body[:json_size])
    assert header == {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}],
        "parameters": {"binary_data_output": True},
    }
    parsed = parse_infer_request(body, str(json_size))  # as the route reads it from the HTTP header
    assert parsed.id is None
    assert parsed.outputs is None
    assert parsed.binary_output_default is True

    out, json_length = build_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[Tensor.from_numpy("y", array * 2), Tensor.from_numpy("z", SAMPLES["BYTES"])],
        requested=parsed.outputs,
        binary_output_default=parsed.binary_output_default,
    )
    assert json_length is not None
    outputs = orjson.loads(out[:json_length])["outputs"]
    assert [("data" in o, o["parameters"]["binary_data_size"]) for o in outputs] == [(False, 24), (False, 35)]
    result = _client_result(out, json_length)
    _assert_same(result.as_numpy("y"), array * 2)
    _assert_same(result.as_numpy("z"), SAMPLES["BYTES"])

    # A requested output with default settings asks for binary data too.
    assert httpclient.InferRequestedOutput("y")._get_tensor() == {"name": "y", "parameters": {"binary_data": True}}


def test_per_output_binary_flag_overrides_the_request_default() -> None:
    body = _request(
        [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}],
        parameters={"binary_data_output": True, "priority": 2},
        outputs=[{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
    )
    parsed = parse_infer_request(body, None)
    assert parsed.outputs == [RequestedOutput("a", binary=False), RequestedOutput("b", binary=True)]
    assert parsed.parameters["priority"] == 2

    outputs = [Tensor.from_numpy("b", np.arange(3, dtype=np.int64)), Tensor.from_numpy("a", np.ones(2, np.int8))]
    out, json_length = build_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=outputs,
        requested=parsed.outputs,
        binary_output_default=True,
    )
    header = orjson.loads(out[:json_length])
    assert header["outputs"][0] == {"name": "a", "datatype": "INT8", "shape": [2], "data": [1, 1]}
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 24}
    assert out[json_length:] == np.arange(3, dtype="<i8").tobytes()


def test_mixed_binary_and_json_inputs_take_bytes_in_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    c = np.array([7, 8], dtype=np.int16)
    inputs = [
        _triton_input("a", a, "FP32", True),
        _triton_input("b", SAMPLES["INT8"], "INT8", False),
        _triton_input("c", c, "INT16", True),
        _triton_input("d", SAMPLES["BYTES"], "BYTES", True),
    ]
    body, json_size = Client.generate_request_body(inputs)
    ta, tb, tc, td = parse_infer_request(body, json_size).inputs
    _assert_same(ta.to_numpy(), a)
    _assert_same(tb.to_numpy(), SAMPLES["INT8"])
    _assert_same(tc.to_numpy(), c)
    _assert_same(td.to_numpy(), SAMPLES["BYTES"])


def test_bytes_output_that_is_not_utf8_goes_binary() -> None:
    raw = Tensor("b", "BYTES", (2,), encode_bytes_elements([b"\xff\xfe", b"ok"]))
    out, json_length = build_infer_response(
        model_name="m",
        model_version=None,
        request_id="1",
        outputs=[raw, Tensor.from_numpy("f", np.ones(1, np.float32))],
        requested=None,
        binary_output_default=False,
    )
    assert json_length is not None
    header = orjson.loads(out[:json_length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert header["outputs"][1]["data"] == [1.0]
    assert _client_result(out, json_length).as_numpy("b").tolist() == [b"\xff\xfe", b"ok"]


def test_select_outputs_filters_orders_and_names_a_missing_output() -> None:
    a, b = Tensor.from_numpy("a", np.ones(1)), Tensor.from_numpy("b", np.ones(1))
    assert select_outputs([a, b], None, True) == [(a, True), (b, True)]
    assert select_outputs([a, b], [RequestedOutput("b", False)]) == [(b, False)]
    with pytest.raises(BadRequest, match="requested output 'nope'"):
        select_outputs([a, b], [RequestedOutput("nope", True)])


def test_error_and_metadata_bodies() -> None:
    assert orjson.loads(error_body('bad "thing"')) == {"error": 'bad "thing"'}
    body = model_metadata_body(
        "iris",
        ["1", "2"],
        "pytorch_torchscript",
        [{"name": "features", "datatype": "FP32", "shape": (-1, 4), "extra": 1}],
        [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]}],
    )
    assert orjson.loads(body) == {
        "name": "iris",
        "versions": ["1", "2"],
        "platform": "pytorch_torchscript",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]}],
    }


# ------------------------------------------------------------------------------------------ bad requests


def _one(name: str = "features", **fields: Any) -> bytes:
    spec = {"name": name, "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6], **fields}
    return _request([{k: v for k, v in spec.items() if v is not ...}])


F32_6 = np.arange(6, dtype="<f4").tobytes()

BAD_INPUTS = [
    (_one(data=[1, 2, 3, 4, 5]), None, "input 'features': shape [2, 3] needs 6 elements, got 5"),
    (
        _one(data=[[1, 2, 3], [4, 5, 6], [7]]),
        None,
        "input 'features': data does not match datatype FP32: not a regular",
    ),
    (_one(data=[[1, 2], [3, 4, 5, 6]]), None, "input 'features': data does not match datatype FP32: not a regular"),
    (_one(data=[[1, 2, 3], 4, 5, 6]), None, "input 'features': data does not match datatype FP32: not a regular"),
    (_one(datatype="FP33"), None, "input 'features': datatype 'FP33' is not a V2 datatype"),
    (_one(datatype=7), None, "input 'features': datatype 7 is not a V2 datatype"),
    (_one(datatype=...), None, "input 'features': datatype None is not a V2 datatype"),
    (_one(data=["1", 2, 3, 4, 5, 6]), None, "input 'features': data does not match datatype FP32: expected numbers"),
    (_one(data=[True, 2, 3, 4, 5, 6]), None, "input 'features': data does not match datatype FP32"),
    (_one(data=[None, 2, 3, 4, 5, 6]), None, "input 'features': data does not match datatype FP32"),
    (_one(data=[{}, 2, 3, 4, 5, 6]), None, "input 'features': data does not match datatype FP32"),
    (
        _one(data=[1e39, 2, 3, 4, 5, 6]),
        None,
        "input 'features': data does not match datatype FP32: a value is too large",
    ),
    (_one(data=[7e4, 2, 3, 4, 5, 6], datatype="FP16"), None, "input 'features': data does not match datatype FP16"),
    (_one(data=[4e38, 2, 3, 4, 5, 6], datatype="BF16"), None, "input 'features': data does not match datatype BF16"),
    (_one(datatype="INT32", data=[1.5, 2, 3, 4, 5, 6]), None, "input 'features': data does not match datatype INT32"),
    (
        _one(datatype="INT8", data=[128, 2, 3, 4, 5, 6]),
        None,
        "input 'features': data does not match datatype INT8: values",
    ),
    (_one(datatype="UINT8", data=[-1, 2, 3, 4, 5, 6]), None, "input 'features': data does not match datatype UINT8"),
    (_one(datatype="INT64", data=[2**63, 2, 3, 4, 5, 6]), None, "input 'features': data does not match datatype INT64"),
    (_one(datatype="INT64", data=[2**64, 2, 3, 4, 5, 6]), None, "input 'features': data does not match datatype INT64"),
    (_one(datatype="BOOL", data=[1, 0, 1, 0, 1, 0]), None, "input 'features': data does not match datatype BOOL"),
    (_one(datatype="BYTES", data=[1, 2, 3, 4, 5, 6]), None, "input 'features': data does not match datatype BYTES"),
    (_one(data=5), None, "input 'features': 'data' must be a list"),
    (_one(data=...), None, "input 'features': needs 'data' or parameters.binary_data_size"),
    (_one(parameters={"binary_data_size": 24}), None, "input 'features': has both 'data'"),
    (_one(shape=[2, -3]), None, "input 'features': shape must be a list of non-negative integers"),
    (_one(shape=[2, True]), None, "input 'features': shape must be a list of non-negative integers"),
    (_one(shape="2,3"), None, "input 'features': shape must be a list of non-negative integers"),
    (_one(shape=[1] * 9, data=[1]), None, "input 'features': shape [1, 1, 1, 1, 1, 1, 1, 1, 1] has rank 9"),
    (_one(parameters=[]), None, "input 'features': 'parameters' must be an object"),
    (_one(parameters={"shared_memory_region": "r"}), None, "input 'features': the shared memory extension"),
    (_one(data=..., parameters={"binary_data_size": -1}), None, "input 'features': parameters.binary_data_size"),
    (_one(data=..., parameters={"binary_data_size": "24"}), None, "input 'features': parameters.binary_data_size"),
    (
        _one(data=..., parameters={"binary_data_size": 24}),
        None,
        "binary data: inputs declare 24 bytes but the body carries 0",
    ),
    (
        _request(
            [
                {"name": "features", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                {"name": "features", "shape": [1], "datatype": "FP32", "data": [1]},
            ]
        ),
        None,
        "input 'features' appears more than once",
    ),
    (_one(name=""), None, "inputs[0]: 'name' must be a non-empty string"),
    (_one(name=3), None, "inputs[0]: 'name' must be a non-empty string"),
    (_request(["features"]), None, "inputs[0] must be an object"),
    (b'{"inputs": [', None, "malformed JSON: "),
    (b"\xff\xfe", None, "malformed JSON: "),
    (b"", None, "malformed JSON: "),
    (b"[]", None, "the JSON body must be an object"),
    (b"{}", None, "'inputs' must be a non-empty list"),
    (b'{"inputs": []}', None, "'inputs' must be a non-empty list"),
    (b'{"inputs": {}}', None, "'inputs' must be a non-empty list"),
    (_request([{"name": f"i{n}", "shape": [0], "datatype": "FP32", "data": []} for n in range(65)]), None, "65 inputs"),
]


def _with(request: bytes, **fields: Any) -> bytes:
    return orjson.dumps({**orjson.loads(request), **fields})


BAD_REQUESTS = [
    (_with(_one(), id=5), None, "'id' must be a string"),
    (_with(_one(), parameters="x"), None, "request: 'parameters' must be an object"),
    (_with(_one(), parameters={"binary_data_output": 1}), None, "request: parameters.binary_data_output must be"),
    (_with(_one(), outputs={"name": "y"}), None, "'outputs' must be a list"),
    (_with(_one(), outputs=[{"nom": "y"}]), None, "outputs[0] must be an object with a non-empty 'name'"),
    (_with(_one(), outputs=[{"name": "y"}, {"name": "y"}]), None, "requested output 'y' appears more than once"),
    (_with(_one(), outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]), None, "requested output 'y'"),
    (_with(_one(), outputs=[{"name": "y", "parameters": {"classification": 3}}]), None, "classification extension"),
]


@pytest.mark.parametrize(("body", "header_length", "message"), BAD_INPUTS + BAD_REQUESTS)
def test_bad_requests_raise_bad_request_with_a_clear_message(
    body: bytes, header_length: int | None, message: str
) -> None:
    with pytest.raises(BadRequest) as info:
        parse_infer_request(body, header_length)
    assert type(info.value) is BadRequest
    assert message in info.value.message


def _binary_body(header: dict[str, Any], payload: bytes) -> tuple[bytes, int]:
    head = orjson.dumps(header)
    return head + payload, len(head)


@pytest.mark.parametrize(
    ("size", "payload", "message"),
    [
        (24, F32_6 + b"x", "binary data: inputs declare 24 bytes but the body carries 25"),
        (24, F32_6[:-1], "binary data: inputs declare 24 bytes but the body carries 23"),
        (20, F32_6[:20], "input 'features': shape [2, 3] of FP32 needs 24 bytes, binary_data_size is 20"),
    ],
)
def test_binary_size_mismatches(size: int, payload: bytes, message: str) -> None:
    body, json_length = _binary_body(
        {
            "inputs": [
                {"name": "features", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": size}}
            ]
        },
        payload,
    )
    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_infer_request(body, json_length)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01\x00", "input 'words': BYTES data ends before its 2 elements"),
        (b"\x09\x00\x00\x00abc", "input 'words': a BYTES element runs past the end of its data"),
        (encode_bytes_elements([b"a", b"b", b"c"]), "input 'words': BYTES data has 5 bytes beyond its 2 elements"),
    ],
)
def test_binary_bytes_layout_errors(payload: bytes, message: str) -> None:
    spec = {"name": "words", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(payload)}}
    body, json_length = _binary_body({"inputs": [spec]}, payload)
    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_infer_request(body, json_length)


def test_json_only_body_with_trailing_bytes_is_rejected() -> None:
    body = _one()
    with pytest.raises(BadRequest, match="binary data: inputs declare 0 bytes but the body carries 3"):
        parse_infer_request(body + b"abc", len(body))


@pytest.mark.parametrize("header_length", [0, -1, 10_000, "abc", "1e3", "-5", "\u0661\u0662", True, 1.5, "9" * 40])
def test_bad_header_length(header_length: Any) -> None:
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        parse_infer_request(_one(), header_length)


def test_header_length_equal_to_the_body_means_no_binary_part() -> None:
    body = _one()
    [tensor] = parse_infer_request(body, f" {len(body)} ").inputs
    assert tensor.shape == (2, 3)


@pytest.mark.parametrize("shape", [[1001], [10**6, 10**6], [2**62, 2**62, 2**62]])
def test_too_many_elements_is_payload_too_large(shape: list[int]) -> None:
    with pytest.raises(PayloadTooLarge, match=r"input 'features': shape .* the limit is 1000"):
        parse_infer_request(_one(shape=shape, data=[1]), None, max_elements=1000)


def test_mixed_strings_and_numbers_do_not_blow_up_memory() -> None:
    # numpy would type this as a fixed-width unicode array of 200_000 x 100_000 characters (80 GB).
    data = ["x" * 100_000] + [1] * 199_999
    with pytest.raises(BadRequest, match="input 'features': data does not match datatype FP32: expected numbers"):
        parse_infer_request(_one(shape=[200_000], data=data), None)


# --------------------------------------------------------------------------------------------- fuzzing

KEYS = ["id", "inputs", "outputs", "name", "shape", "datatype", "data", "parameters", "binary_data_size"]
KEYS += ["binary_data", "binary_data_output", "shared_memory_region"]
text = st.text(st.characters(codec="utf-8"), max_size=6)  # no lone surrogates: they make the JSON itself invalid
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.sampled_from([*sorted(DATATYPES), "FP33"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | text, children, max_size=5)
    ),
    max_leaves=30,
)
header_lengths = st.none() | st.integers(min_value=-2, max_value=200) | st.text(max_size=4)


JUNK_ONE_IN = 20


@st.composite
def mostly(draw: st.DrawFn, valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any] = json_values) -> Any:
    """Usually ``valid``, once in ``JUNK_ONE_IN`` ``junk``: deep enough to reach every check, broken often enough."""
    return draw(junk) if draw(st.sampled_from(range(JUNK_ONE_IN))) == 0 else draw(valid)


def _element(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BYTES":
        return text
    if datatype == "BOOL":
        return st.booleans()
    big = st.integers(min_value=-(2**65), max_value=2**65)
    if datatype.startswith(("INT", "UINT")):
        return st.integers(min_value=-300, max_value=300) | big
    return st.integers(min_value=-300, max_value=300) | big | st.floats(-1e40, 1e40, allow_nan=False)


def _nest(values: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) <= 1:
        return values
    step = len(values) // shape[0] if shape[0] else 0
    return [_nest(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def input_specs(draw: st.DrawFn, name: str) -> tuple[dict[str, Any], bytes]:
    """A mostly valid input (JSON or binary) and its binary bytes, with one field or another broken."""
    datatype = draw(st.sampled_from(sorted(DATATYPES)))
    shape = draw(st.lists(st.integers(min_value=0, max_value=3), max_size=3))
    count = max(0, element_count(shape) + draw(st.sampled_from([0, 0, 0, -1, 1])))
    spec = {"name": draw(mostly(st.just(name))), "datatype": draw(mostly(st.just(datatype)))}
    spec["shape"] = draw(mostly(st.just(shape)))
    if draw(st.booleans()):
        if datatype == "BYTES":
            raw = encode_bytes_elements(draw(st.lists(st.binary(max_size=4), min_size=count, max_size=count)))
        else:
            size = count * NUMPY_BY_DATATYPE[datatype].itemsize
            raw = draw(st.binary(min_size=size, max_size=size))
        spec["parameters"] = {"binary_data_size": draw(mostly(st.just(len(raw)), st.integers(-1, 50) | json_values))}
        return spec, raw
    values = draw(st.lists(mostly(_element(datatype), scalars), min_size=count, max_size=count))
    nested = _nest(values, shape) if draw(st.booleans()) else values
    spec["data"] = draw(mostly(st.just(nested)))
    return spec, b""


@st.composite
def request_bodies(draw: st.DrawFn) -> tuple[bytes, Any]:
    names = draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=3, unique=True))
    names += draw(mostly(st.just([]), st.just(names[:1])))  # now and then a duplicate
    specs = [draw(input_specs(name)) for name in names]
    request: dict[str, Any] = {"inputs": [spec for spec, _ in specs]}
    if draw(st.booleans()):
        request["id"] = draw(mostly(text))
    if draw(st.booleans()):
        output = st.fixed_dictionaries(
            {"name": mostly(st.sampled_from("yz"))},
            optional={"parameters": st.fixed_dictionaries({"binary_data": mostly(st.booleans())})},
        )
        request["outputs"] = draw(mostly(st.lists(output, max_size=3)))
    if draw(st.booleans()):
        request["parameters"] = draw(mostly(st.fixed_dictionaries({"binary_data_output": mostly(st.booleans())})))
    head = json.dumps(request).encode()
    tail = b"".join(raw for _, raw in specs) + draw(st.sampled_from([b"", b"", b"", b"x"]))
    header_length = len(head) if tail or draw(st.booleans()) else None
    return head + tail, draw(mostly(st.just(header_length), header_lengths))


def _parse_or_bad_request(body: bytes, header_length: Any) -> None:
    try:
        parsed = parse_infer_request(body, header_length, max_elements=10_000)
    except BadRequest:  # any other exception fails the test
        return
    # What parses must be something a worker accepts.
    frames = encode(InferRequest("r", "m", None, 1000.0, parsed.inputs, None))
    for tensor, decoded in zip(parsed.inputs, decode(frames).inputs, strict=True):
        assert tensor.to_numpy().shape == decoded.shape


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(body=st.binary(max_size=200), header_length=header_lengths)
def test_fuzz_random_bytes_raise_only_bad_request(body: bytes, header_length: Any) -> None:
    _parse_or_bad_request(body, header_length)


@FUZZ
@given(value=json_values, tail=st.binary(max_size=40), with_length=st.booleans())
def test_fuzz_random_json_raises_only_bad_request(value: Any, tail: bytes, with_length: bool) -> None:
    head = json.dumps(value).encode()
    _parse_or_bad_request(head + tail, len(head) if with_length else None)


@FUZZ
@given(request=request_bodies())
def test_fuzz_request_shaped_bodies_raise_only_bad_request(request: tuple[bytes, Any]) -> None:
    _parse_or_bad_request(*request)


NUMERIC = ["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"]


@FUZZ
@given(datatype=st.sampled_from(NUMERIC), data=st.data())
def test_json_numbers_become_the_bytes_numpy_gives_or_a_bad_request(datatype: str, data: st.DataObject) -> None:
    dtype = NUMPY_BY_DATATYPE[datatype]
    if datatype == "BOOL":
        elements = st.booleans()
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        elements = st.integers(info.min, info.max)
    else:  # rounding and overflow near the type's limits, and integers that are not floats in JSON
        limit = float(np.finfo(dtype).max)
        elements = st.floats(-2 * limit, 2 * limit, allow_infinity=False) | st.integers(-(2**70), 2**70)
    values = data.draw(st.lists(elements, min_size=1, max_size=12))
    body = _request([{"name": "x", "shape": [len(values)], "datatype": datatype, "data": values}])
    with np.errstate(over="ignore"):
        expected = np.asarray(values, dtype=dtype.newbyteorder("<"))
    if dtype.kind == "f" and not np.isfinite(expected).all():
        with pytest.raises(BadRequest, match=f"a value is too large for {datatype}"):
            parse_infer_request(body, None)
        return
    [tensor] = parse_infer_request(body, None).inputs
    assert bytes(tensor.data) == expected.tobytes()
