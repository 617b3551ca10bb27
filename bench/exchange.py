"""Per-batch round-trip cost of the data plane vs an in-memory copy and a raw TCP socket.

Echo of one payload (N bytes up, the same N bytes down), median of ``--repeats``,
client and server in this process on two threads, loopback:

    .venv/bin/python bench/exchange.py --sizes-mib 1 16 --repeats 30

Rows: ``memcpy`` (numpy copy, one way), ``raw-tcp`` (length-prefixed frames,
``sendall``/``recv_into``), ``zmq`` (pyzmq DEALER/ROUTER, zero-copy; skipped if pyzmq is
missing), ``grpc-1msg`` / ``grpc-1MiB-chunks`` (bytes echo on a grpcio stream, the
library alone), ``dataplane-fp32`` / ``dataplane-bf16`` (``DeviceSession.exchange``
against ``DataPlaneServer``: codec, chunking, finite checks included; bf16 halves the
bytes on the wire).
"""

from __future__ import annotations

import argparse
import queue
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import numpy as np
import torch

from splitkd_flwr.transport.stream import (
    DataPlaneServer,
    DeviceSession,
    Frame,
    new_token,
)

RoundTrip = Callable[[], None]


def median_ms(round_trip: RoundTrip, repeats: int) -> float:
    """Median wall time of ``round_trip`` in ms, after one warm-up call."""
    round_trip()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        round_trip()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench_memcpy(payload: np.ndarray, repeats: int) -> float:
    dst = np.empty_like(payload)
    return median_ms(lambda: np.copyto(dst, payload), repeats)


def _recv_exact(sock: socket.socket, buf: bytearray | memoryview) -> None:
    view, got = memoryview(buf), 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n


def bench_raw_tcp(payload: np.ndarray, repeats: int) -> float:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            head = bytearray(8)
            try:
                while True:
                    _recv_exact(conn, head)
                    body = bytearray(struct.unpack("<Q", head)[0])
                    _recv_exact(conn, body)
                    conn.sendall(head)
                    conn.sendall(body)
            except EOFError:
                pass

    server = threading.Thread(target=serve)
    server.start()
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head, back = bytearray(8), bytearray(payload.nbytes)

    def round_trip() -> None:
        client.sendall(struct.pack("<Q", payload.nbytes))
        client.sendall(payload)
        _recv_exact(client, head)
        _recv_exact(client, back)

    try:
        return median_ms(round_trip, repeats)
    finally:
        client.close()
        server.join()
        listener.close()


def bench_zmq(payload: np.ndarray, repeats: int) -> float | None:
    try:
        import zmq
    except ImportError:
        return None
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        while True:
            msg = router.recv_multipart(copy=False)
            router.send_multipart(msg, copy=False)
            if msg[1].bytes == b"bye":
                return

    server = threading.Thread(target=serve)
    server.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")

    def round_trip() -> None:
        dealer.send(payload, copy=False)
        dealer.recv(copy=False)

    try:
        return median_ms(round_trip, repeats)
    finally:
        dealer.send(b"bye")
        dealer.recv()
        server.join()
        dealer.close()
        router.close()
        ctx.term()


def bench_grpc(payload: np.ndarray, repeats: int, chunk_bytes: int | None) -> float:
    opts = [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
    ]

    def echo(
        requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        yield from requests

    pool = futures.ThreadPoolExecutor(2)
    server = grpc.server(pool, options=opts)
    handler = grpc.stream_stream_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("b.B", {"E": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)
    requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    call = channel.stream_stream("/b.B/E")(iter(requests.get, None))
    data = payload.tobytes()
    step = chunk_bytes or len(data)
    pieces = [data[i : i + step] for i in range(0, len(data), step)]

    def round_trip() -> None:
        for piece in pieces:
            requests.put(piece)
        for _ in pieces:
            next(call)

    try:
        return median_ms(round_trip, repeats)
    finally:
        requests.put(None)
        for _ in call:
            pass
        channel.close()
        server.stop(None).wait()
        pool.shutdown()


def bench_dataplane(payload: np.ndarray, repeats: int, wire_dtype: str) -> float:
    x = torch.empty(payload.nbytes // 4).uniform_()  # finite fp32 values, N bytes
    frame = Frame({"x": x})
    with DataPlaneServer() as server:
        token = new_token()
        handle = server.open_round(token, lambda f: f, wire_dtype=wire_dtype)
        address = f"127.0.0.1:{server.port}"
        with DeviceSession(address, token, timeout_s=60, wire_dtype=wire_dtype) as dev:
            ms = median_ms(lambda: dev.exchange(frame), repeats)
        handle.wait(10)
    if handle.error is not None:
        raise handle.error
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, dict[int, float | None]] = {}
    for mib in args.sizes_mib:
        payload = np.random.default_rng(0).integers(0, 255, mib << 20, dtype=np.uint8)
        runs = {
            "memcpy (one way)": lambda: bench_memcpy(payload, args.repeats),
            "raw-tcp": lambda: bench_raw_tcp(payload, args.repeats),
            "zmq": lambda: bench_zmq(payload, args.repeats),
            "grpc-1msg": lambda: bench_grpc(payload, args.repeats, None),
            "grpc-1MiB-chunks": lambda: bench_grpc(payload, args.repeats, 1 << 20),
            "dataplane-fp32": lambda: bench_dataplane(payload, args.repeats, "fp32"),
            "dataplane-bf16": lambda: bench_dataplane(payload, args.repeats, "bf16"),
        }
        for name, run in runs.items():
            rows.setdefault(name, {})[mib] = run()
    header = (
        "| transport | "
        + " | ".join(f"{m} MiB ms | x raw" for m in args.sizes_mib)
        + " |"
    )
    print(header)
    print("|---" * (1 + 2 * len(args.sizes_mib)) + "|")
    for name, by_size in rows.items():
        cells = []
        for mib in args.sizes_mib:
            ms, raw = by_size[mib], rows["raw-tcp"][mib]
            cells += ["n/a", "n/a"] if ms is None else [f"{ms:.2f}", f"{ms / raw:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
