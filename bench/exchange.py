"""Per-batch round-trip cost of the data plane vs an in-memory copy and a raw TCP socket.

Echo of one payload (N bytes up, the same N bytes down), median of ``--repeats``,
client and server in this process on two threads, loopback:

    .venv/bin/python bench/exchange.py --sizes-mib 1 16 --repeats 30

Rows: ``memcpy`` (numpy copy, one way), ``raw-tcp`` (length-prefixed frames,
``sendall``/``recv_into``), ``raw-tls`` (the same over Python's ``ssl``, TLS with a
throw-away certificate), ``zmq`` (pyzmq DEALER/ROUTER, zero-copy; skipped if pyzmq is
missing), ``grpc-1msg`` / ``grpc-1MiB-chunks`` (bytes echo on a grpcio stream, the
library alone, for reference), ``dataplane-fp32`` / ``dataplane-bf16`` /
``dataplane-tls`` (``DeviceSession.exchange`` against ``DataPlaneServer``: codec,
framing, finite checks included; bf16 halves the bytes on the wire; tls is fp32 over
TLS, compare it with ``raw-tls``).

Two tables: wall time, and CPU time of this process (both ends, all threads;
``time.process_time``) per round trip, the steadier figure on a shared machine.
``--diagnose`` adds two fp32 rows with finite checks switched off in this process (the
senders', then all): where the time beyond raw TCP goes, not a mode of the data plane.
``x raw`` is the ratio to ``raw-tcp``, for TLS rows to ``raw-tls``. ``--rows`` picks
rows by name prefix.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import queue
import socket
import ssl
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import torch

from splitkd_flwr.transport.stream import (
    DataPlaneServer,
    DeviceSession,
    Frame,
    new_token,
    self_signed,
)

RoundTrip = Callable[[], None]
Figures = tuple[float, float]  # median wall ms, median CPU ms per round trip


def median_ms(round_trip: RoundTrip, repeats: int) -> Figures:
    """Median wall and CPU time of ``round_trip`` in ms, after one warm-up call."""
    round_trip()
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        round_trip()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts (TLS 1.2+) from a throw-away certificate."""
    server_tls, device_tls = self_signed("127.0.0.1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as folder:
        cert, key = Path(folder, "c.pem"), Path(folder, "k.pem")
        cert.write_bytes(server_tls.certificate_chain)
        key.write_bytes(server_tls.private_key)
        server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.load_verify_locations(cadata=device_tls.root_certificates.decode())
    return server, client


def bench_memcpy(payload: np.ndarray, repeats: int) -> Figures:
    dst = np.empty_like(payload)
    return median_ms(lambda: np.copyto(dst, payload), repeats)


def _recv_exact(sock: socket.socket, buf: bytearray | memoryview) -> None:
    view, got = memoryview(buf), 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n


def bench_raw_tcp(payload: np.ndarray, repeats: int, tls: bool = False) -> Figures:
    listener = socket.create_server(("127.0.0.1", 0))
    server_ctx, client_ctx = _tls_contexts() if tls else (None, None)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if server_ctx is not None:
            conn = server_ctx.wrap_socket(conn, server_side=True)
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
    if client_ctx is not None:
        client = client_ctx.wrap_socket(client, server_hostname="127.0.0.1")
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


def bench_zmq(payload: np.ndarray, repeats: int) -> Figures | None:
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


def bench_grpc(payload: np.ndarray, repeats: int, chunk_bytes: int | None) -> Figures:
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


@contextlib.contextmanager
def _finite_checks(mode: str) -> Iterator[None]:
    """Diagnosis only: switch the senders' (``"receivers"``) or all (``"none"``) off."""
    if mode == "all":
        yield
        return
    from splitkd_flwr.transport import codec, connection, device

    saved = codec._all_finite, connection.encode_frame, device.encode_frame
    if mode in ("receivers", "none"):
        quiet = functools.partial(codec.encode_frame, check_finite=False)
        connection.encode_frame = device.encode_frame = quiet
    if mode == "none":
        codec._all_finite = lambda t: True
    try:
        yield
    finally:
        codec._all_finite, connection.encode_frame, device.encode_frame = saved


def bench_dataplane(
    payload: np.ndarray,
    repeats: int,
    wire_dtype: str,
    tls: bool = False,
    checks: str = "all",
) -> Figures:
    x = torch.empty(payload.nbytes // 4).uniform_()  # finite fp32 values, N bytes
    frame = Frame({"x": x})
    server_tls, device_tls = self_signed("127.0.0.1") if tls else (None, None)
    with _finite_checks(checks), DataPlaneServer(tls=server_tls) as server:
        token = new_token()
        handle = server.open_round(token, lambda f: f, wire_dtype=wire_dtype)
        address = f"127.0.0.1:{server.port}"
        with DeviceSession(
            address, token, timeout_s=60, wire_dtype=wire_dtype, tls=device_tls
        ) as dev:
            ms = median_ms(lambda: dev.exchange(frame), repeats)
        handle.wait(10)
    if handle.error is not None:
        raise handle.error
    return ms


def _print_table(
    title: str, rows: dict[str, dict[int, Figures | None]], sizes: list[int], col: int
) -> None:
    print(f"\n{title}")
    print("| transport | " + " | ".join(f"{m} MiB ms | x raw" for m in sizes) + " |")
    print("|---" * (1 + 2 * len(sizes)) + "|")
    for name, by_size in rows.items():
        cells = []
        for mib in sizes:
            # TLS rows compare with the raw socket under the same TLS.
            ref = "raw-tls" if "tls" in name and "raw-tls" in rows else "raw-tcp"
            got, raw = by_size[mib], rows.get(ref, {}).get(mib)
            if got is None:
                cells += ["n/a", "n/a"]
                continue
            ratio = f"{got[col] / raw[col]:.2f}" if raw else "n/a"
            cells += [f"{got[col]:.2f}", ratio]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--rows", nargs="+", default=None, help="row name prefixes (default: all)"
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="add fp32 rows with only the receivers' finite checks, and with none",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, dict[int, Figures | None]] = {}
    for mib in args.sizes_mib:
        payload = np.random.default_rng(0).integers(0, 255, mib << 20, dtype=np.uint8)
        runs = {
            "memcpy (one way)": lambda: bench_memcpy(payload, args.repeats),
            "raw-tcp": lambda: bench_raw_tcp(payload, args.repeats),
            "raw-tls": lambda: bench_raw_tcp(payload, args.repeats, tls=True),
            "zmq": lambda: bench_zmq(payload, args.repeats),
            "grpc-1msg": lambda: bench_grpc(payload, args.repeats, None),
            "grpc-1MiB-chunks": lambda: bench_grpc(payload, args.repeats, 1 << 20),
            "dataplane-fp32": lambda: bench_dataplane(payload, args.repeats, "fp32"),
            "dataplane-bf16": lambda: bench_dataplane(payload, args.repeats, "bf16"),
            "dataplane-tls": lambda: bench_dataplane(
                payload, args.repeats, "fp32", tls=True
            ),
        }
        if args.diagnose:
            runs["diag-fp32-receiver-checks"] = lambda: bench_dataplane(
                payload, args.repeats, "fp32", checks="receivers"
            )
            runs["diag-fp32-no-checks"] = lambda: bench_dataplane(
                payload, args.repeats, "fp32", checks="none"
            )
        for name, run in runs.items():
            if args.rows is None or any(name.startswith(p) for p in args.rows):
                rows.setdefault(name, {})[mib] = run()
    _print_table("wall time per round trip (median)", rows, args.sizes_mib, 0)
    _print_table("CPU time per round trip, both ends (median)", rows, args.sizes_mib, 1)


if __name__ == "__main__":
    main()
