"""Tests of the frame codec: round trips, wire casts, and refusal of malformed frames."""

import struct

import pytest
import torch

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport.codec import (
    ALIGN_BYTES,
    decode_frame,
    encode_frame,
    encoded_nbytes,
)
from splitkd_flwr.transport.frame import Frame, TensorSpec, check_spec


def _roundtrip(frame: Frame, wire_dtype: str = "fp32", **kw) -> Frame:
    return decode_frame(b"".join(encode_frame(frame, wire_dtype)), **kw)


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "f32": torch.randn(2, 3, 4),
        "f64": torch.randn(5, dtype=torch.float64),
        "f16": torch.randn(3, 2).half(),
        "bf16": torch.randn(3, 2).bfloat16(),
        "i64": torch.randint(-(2**40), 2**40, (4, 7)),
        "i32": torch.randint(-100, 100, (3,), dtype=torch.int32),
        "i16": torch.randint(-100, 100, (3,), dtype=torch.int16),
        "i8": torch.randint(-100, 100, (3,), dtype=torch.int8),
        "u8": torch.randint(0, 255, (3,), dtype=torch.uint8),
        "bool": torch.rand(2, 5) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "transposed": torch.randn(4, 3).t(),
    }


def test_roundtrip_every_dtype_is_exact() -> None:
    # Prepare
    frame = Frame(
        _tensors(), {"loss": 2.5, "step": 3, "tag": "up", "ok": True, "none": None}
    )

    # Execute
    out = _roundtrip(frame)

    # Assert
    assert list(out.tensors) == list(frame.tensors)
    for name, t in frame.tensors.items():
        assert out[name].dtype == t.dtype, name
        assert out[name].shape == t.shape, name
        assert torch.equal(out[name], t), name
    assert out.meta == frame.meta


@pytest.mark.parametrize("wire", ["fp16", "bf16", "int8"])
def test_wire_cast_restores_dtype_within_precision(wire: str) -> None:
    x = torch.randn(4, 8, 16)
    labels = torch.randint(0, 50_000, (4, 8))
    parts = encode_frame(Frame({"x": x, "labels": labels}), wire)
    out = decode_frame(b"".join(parts))
    assert out["x"].dtype == torch.float32
    assert torch.equal(out["labels"], labels)  # integers go as they are
    tol = {"fp16": 1e-3, "bf16": 1e-2, "int8": 1e-2}[wire]
    assert (out["x"] - x).abs().max() <= tol * x.abs().max()
    assert not torch.equal(out["x"], x)  # the cast really happened


def test_wire_cast_shrinks_frame() -> None:
    frame = Frame({"x": torch.randn(8, 64, 256)})
    sizes = {
        w: encoded_nbytes(encode_frame(frame, w)) for w in ("fp32", "fp16", "int8")
    }
    numel = 8 * 64 * 256
    assert numel * 4 <= sizes["fp32"] < numel * 4 + 2 * ALIGN_BYTES + 64
    assert numel * 2 <= sizes["fp16"] < numel * 2 + 2 * ALIGN_BYTES + 64
    assert numel + 4 * 256 <= sizes["int8"] < numel + 4 * 256 + 2 * ALIGN_BYTES + 64


def test_decode_is_zero_copy_for_writable_buffer_and_copies_read_only() -> None:
    buf = bytearray(b"".join(encode_frame(Frame({"x": torch.arange(16.0)}))))
    view = decode_frame(buf)["x"]
    copy = decode_frame(bytes(buf))["x"]
    view.add_(1.0)  # writes through to buf
    again = decode_frame(buf)["x"]
    assert torch.equal(again, torch.arange(16.0) + 1)
    copy.add_(1.0)  # must not fail although its source was read-only
    assert torch.equal(copy, torch.arange(16.0) + 1)


def test_fp16_overflow_is_refused_on_encode() -> None:
    with pytest.raises(TransportError, match="'x' overflows the fp16"):
        encode_frame(Frame({"x": torch.tensor([1e6])}), "fp16")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_is_refused_naming_the_tensor(bad: float) -> None:
    x = torch.randn(3, 4)
    x[1, 2] = bad
    with pytest.raises(TransportError, match="'grad' contains NaN or inf"):
        encode_frame(Frame({"grad": x}))
    raw = b"".join(encode_frame(Frame({"grad": x}), check_finite=False))
    with pytest.raises(TransportError, match="'grad' contains NaN or inf"):
        decode_frame(raw)
    assert torch.isnan(decode_frame(raw, check_finite=False)["grad"][1, 2]) == (
        bad != bad
    )


def test_large_finite_values_are_not_mistaken_for_inf() -> None:
    # The fast sum check overflows here; the exact check must accept the frame.
    x = torch.full((1024,), 3e38)
    assert torch.equal(_roundtrip(Frame({"x": x}))["x"], x)


def _one_tensor_frame() -> bytearray:
    return bytearray(b"".join(encode_frame(Frame({"x": torch.ones(2, 3)}, {"a": 1}))))


def _header_offsets(raw: bytearray) -> dict[str, int]:
    meta_len = struct.unpack_from("<I", raw, 8)[0]
    t = 12 + meta_len
    # name_len, dtype, wire, ndim, then the name "x", shape (2 x i64), nbytes
    return {"dtype": t + 1, "wire": t + 2, "shape": t + 5, "nbytes": t + 5 + 16}


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b: b[:7], "truncated while reading the fixed header"),
        (lambda b: b[:40], "truncated"),
        (lambda b: b[:-4], "truncated payload of 'x'"),
        (lambda b: b + b"\0", "1 trailing bytes"),
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + b"\x07" + b[5:], "unsupported version 7"),
    ],
)
def test_malformed_frames_are_refused(corrupt, message: str) -> None:
    with pytest.raises(TransportError, match=message):
        decode_frame(corrupt(_one_tensor_frame()))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dtype", struct.pack("<B", 42), "unknown dtype code 42"),
        ("wire", struct.pack("<B", 77), "unknown wire dtype code 77"),
        (
            "wire",
            struct.pack("<B", 9),
            "wire dtype torch.int64 cannot carry torch.float32",
        ),
        ("shape", struct.pack("<q", -2), "negative dimension"),
        ("shape", struct.pack("<q", 2**40), "exceeds max_frame_bytes"),
        ("shape", struct.pack("<q", 3), r"24 bytes do not match shape \(3, 3\)"),
        ("nbytes", struct.pack("<Q", 25), "25 bytes do not match"),
    ],
)
def test_inconsistent_headers_are_refused(
    field: str, value: bytes, message: str
) -> None:
    raw = _one_tensor_frame()
    at = _header_offsets(raw)[field]
    raw[at : at + len(value)] = value
    with pytest.raises(TransportError, match=message):
        decode_frame(raw)


def test_oversized_frame_and_bad_meta_are_refused() -> None:
    raw = _one_tensor_frame()
    with pytest.raises(
        TransportError, match=f"{len(raw)} bytes exceed max_frame_bytes=64"
    ):
        decode_frame(raw, max_frame_bytes=64)
    raw[12:19] = b'["a",1]'  # same length as the original meta {"a":1}
    with pytest.raises(TransportError, match="meta must be a JSON object of scalars"):
        decode_frame(raw)
    raw[12:19] = b'{"a":NaN'[:7]
    with pytest.raises(TransportError, match="meta is not valid JSON"):
        decode_frame(raw)
    with pytest.raises(TransportError, match="meta must be finite JSON"):
        encode_frame(Frame({}, {"loss": float("nan")}))


def test_spec_checks_names_dtypes_and_symbolic_dims() -> None:
    spec = {
        "h": TensorSpec(torch.float32, ("B", "T", 8)),
        "labels": TensorSpec(torch.int64, ("B", "T")),
    }
    good = Frame(
        {"h": torch.zeros(2, 5, 8), "labels": torch.zeros(2, 5, dtype=torch.long)}
    )
    assert _roundtrip(good, spec=spec)["h"].shape == (2, 5, 8)
    cases = [
        (Frame({"h": good["h"]}), "expected \\['h', 'labels'\\]"),
        (
            Frame({"h": good["h"], "labels": good["labels"].int()}),
            "'labels' has dtype torch.int32",
        ),
        (
            Frame({"h": torch.zeros(2, 5, 9), "labels": good["labels"]}),
            "'h' has shape \\(2, 5, 9\\)",
        ),
        (
            Frame({"h": good["h"], "labels": torch.zeros(2, 6, dtype=torch.long)}),
            "'labels' has shape",
        ),
        (
            Frame({"h": torch.zeros(2, 5), "labels": good["labels"]}),
            "'h' has shape \\(2, 5\\)",
        ),
    ]
    for frame, message in cases:
        with pytest.raises(TransportError, match=message):
            check_spec(frame, spec)


def _large_with_bad(
    bad: float, where: str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    # 4 MiB + one row of fp32: several MiB-sized pieces and a ragged end.
    x = torch.randn(1025, 1024).to(dtype)
    x.view(-1)[0 if where == "first" else -1] = bad
    return x


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("wire", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("bad", [float("nan"), -float("inf")])
def test_nonfinite_at_either_end_of_a_large_tensor_is_refused_on_both_sides(
    bad: float, wire: str, where: str
) -> None:
    frame = Frame({"ok": torch.randn(3), "grad": _large_with_bad(bad, where)})
    # Sender: refused as NaN/inf (not as a wire overflow), naming the tensor.
    with pytest.raises(TransportError, match="^tensor 'grad' contains NaN or inf$"):
        encode_frame(frame, wire)
    # Receiver: the same frame sent unchecked is refused when decoded.
    raw = bytearray(b"".join(encode_frame(frame, wire, check_finite=False)))
    with pytest.raises(TransportError, match="^tensor 'grad' contains NaN or inf$"):
        decode_frame(raw)


def test_a_wire_cast_that_overflows_the_decoded_dtype_is_refused() -> None:
    # fp32 bytes announced as an fp16 tensor: 1e6 is finite on the wire but inf once
    # cast, so the decoded tensor (not the wire bytes) must be what is checked.
    raw = bytearray(b"".join(encode_frame(Frame({"x": torch.full((2, 3), 1e6)}))))
    raw[_header_offsets(raw)["dtype"]] = 2  # float16
    with pytest.raises(TransportError, match="'x' contains NaN or inf"):
        decode_frame(raw)
    raw[_header_offsets(raw)["dtype"]] = 4  # float64: a widening cast is exact
    assert torch.equal(decode_frame(raw)["x"], torch.full((2, 3), 1e6).double())
