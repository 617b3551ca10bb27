"""The device's end of a round: connect with the token, exchange frames, close."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType

import grpc

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport import wire
from splitkd_flwr.transport.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    WIRE_DTYPES,
    decode_frame,
    encode_frame,
    encoded_nbytes,
)
from splitkd_flwr.transport.frame import Frame, TensorSpec
from splitkd_flwr.transport.tls import DeviceTLS

__all__ = ["DeviceSession"]

_END = object()  # the server ended the stream with status OK


class DeviceSession:
    """One round seen from the device; connects on construction.

    Parameters
    ----------
    address : str
        ``host:port`` of the server's data plane (from the round plan).
    token : str
        The round's one-time token (from the round plan).
    timeout_s : float
        Longest wait for the connection, for each answer and for the close.
    tls : DeviceTLS | None
        Root certificate to trust; ``None`` connects without encryption (loopback only).
    wire_dtype : str
        Wire dtype of the up frames (``WIRE_DTYPES``).
    max_frame_bytes : int
        Larger down frames end the round with an error.
    spec : Mapping[str, TensorSpec] | None
        Expected down frames; a mismatch raises ``TransportError``.

    Raises
    ------
    TransportError
        Server unreachable within ``timeout_s``, or the token refused.
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        timeout_s: float = 60.0,
        tls: DeviceTLS | None = None,
        wire_dtype: str = "fp32",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        spec: Mapping[str, TensorSpec] | None = None,
    ) -> None:
        if wire_dtype not in WIRE_DTYPES:
            raise TransportError(
                f"wire_dtype={wire_dtype!r} is not one of {WIRE_DTYPES}"
            )
        self.address, self.timeout_s = address, timeout_s
        self.wire_dtype, self.max_frame_bytes, self.spec = (
            wire_dtype,
            max_frame_bytes,
            spec,
        )
        self.frames = self.bytes_up = self.bytes_down = 0
        self.exchange_s = 0.0  # wall time inside exchange(), codec included
        self._closed = False
        options = wire.channel_options()
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            options += tls.channel_options()
            self._channel = grpc.secure_channel(
                address, tls.credentials(), options=options
            )
        self._requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._responses: queue.SimpleQueue[object] = queue.SimpleQueue()
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            ready.cancel()
            self._channel.close()
            raise TransportError(
                f"cannot reach the data-plane server at {address} within {timeout_s} s"
            ) from None
        call = self._channel.stream_stream(wire.METHOD)
        self._call = call(self._request_stream(), metadata=((wire.TOKEN_KEY, token),))
        self._reader = threading.Thread(
            target=self._read, name="splitkd-dataplane-reader"
        )
        self._reader.start()
        try:
            if self._next(time.monotonic() + timeout_s) != wire.ACCEPT:
                raise TransportError("malformed answer to the round token")
        except TransportError:
            self._shutdown()
            raise

    def exchange(self, frame: Frame) -> Frame:
        """Send ``frame`` up and return the server's answer.

        Raises
        ------
        TransportError
            No answer within ``timeout_s``, the round ended by the server (its message
            included), or a malformed, oversized, non-finite or unexpected answer.
        """
        if self._closed:
            raise TransportError("the data-plane session is closed")
        start = time.perf_counter()
        parts = encode_frame(frame, self.wire_dtype)
        for chunk in wire.chunk_frame(parts):
            self._requests.put(chunk)
        deadline = time.monotonic() + self.timeout_s
        rx = wire.Reassembler(self.max_frame_bytes)
        buf = None
        while buf is None:
            msg = self._next(deadline)
            if msg is _END or not isinstance(msg, bytes) or msg[:1] != wire.DATA:
                raise TransportError("the server ended the round without an answer")
            buf = rx.add(msg)
        answer = decode_frame(buf, max_frame_bytes=self.max_frame_bytes, spec=self.spec)
        self.frames += 1
        self.bytes_up += encoded_nbytes(parts)
        self.bytes_down += len(buf)
        self.exchange_s += time.perf_counter() - start
        return answer

    def close(self) -> None:
        """End the round cleanly; the server's round completes without error."""
        if self._closed:
            return
        self._requests.put(wire.CLOSE)
        try:
            if self._next(time.monotonic() + self.timeout_s) is not _END:
                raise TransportError("the server answered the close with data")
        finally:
            self._shutdown()

    def abort(self, reason: str) -> None:
        """End the round with an error the server records as ``reason``; never raises."""
        if self._closed:
            return
        self._requests.put(wire.ABORT + reason.encode()[:4096])
        try:  # give the server a moment to read the reason before the stream goes
            self._next(time.monotonic() + min(self.timeout_s, 1.0))
        except TransportError:
            pass
        finally:
            self._shutdown()

    def __enter__(self) -> DeviceSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(f"{type(exc).__name__}: {exc}")

    def _request_stream(self) -> Iterator[bytes]:
        while (msg := self._requests.get()) is not None:
            yield msg

    def _read(self) -> None:
        try:
            for msg in self._call:
                self._responses.put(msg)
            self._responses.put(_END)
        except grpc.RpcError as err:
            self._responses.put(err)

    def _next(self, deadline: float) -> object:
        try:
            msg = self._responses.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TransportError(
                f"no answer from the data-plane server at {self.address} within "
                f"timeout_s={self.timeout_s}"
            ) from None
        if isinstance(msg, grpc.RpcError):
            self._responses.put(msg)  # every later call fails the same way
            raise TransportError(f"data-plane round failed: {_describe(msg)}")
        return msg

    def _shutdown(self) -> None:
        self._closed = True
        self._requests.put(None)  # lets gRPC's request-consuming thread finish
        self._call.cancel()
        self._reader.join()
        self._channel.close()


def _describe(err: grpc.RpcError) -> str:
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    if code == grpc.StatusCode.CANCELLED:
        return "the server cancelled the round (idle timeout, round closed or server stopped)"
    return f"{details} [{code.name if code else 'unknown'}]"
