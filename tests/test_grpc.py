"""gRPC through lbx, end to end with the real ``grpcio`` client and server: unary, server
streaming, client streaming and bidirectional calls, status and message in trailers (and
trailers-only answers), deadlines and cancellation (RST_STREAM from the client reaches the
server), over h2c prior knowledge and over TLS with ALPN on both sides.

The service is declared with grpcio's generic handlers (messages are bytes, no codegen).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
import trustme
import yaml

from lbx.testing import LbxProcess

TIMEOUT = 60.0
SERVICE = "lbx.test.Echo"
SERVER_NAME = "backend.test"
PROXY_NAME = "lbx.test"
CHUNK = 64 * 1024


@dataclass
class Observed:
    """What the server's handlers saw (set from its threads)."""

    slow_started: threading.Event = field(default_factory=threading.Event)
    slow_cancelled: threading.Event = field(default_factory=threading.Event)
    metadata: dict[str, str] = field(default_factory=dict)


def echo_service(observed: Observed) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        observed.metadata.update(
            (key, value) for key, value in context.invocation_metadata() if isinstance(value, str)
        )
        context.set_trailing_metadata((("x-trailer", "unary"),))
        return b"echo:" + request

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for index in range(int(request)):
            yield b"%d:" % index + b"s" * CHUNK

    def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        sizes = [len(request) for request in requests]
        return b"%d messages, %d bytes" % (len(sizes), sum(sizes))

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield request[::-1]

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())
        raise AssertionError("abort raises")

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.add_callback(observed.slow_cancelled.set)  # runs when the RPC is cancelled too
        observed.slow_started.set()
        observed.slow_cancelled.wait(TIMEOUT)
        return b"late"

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
        },
    )


@dataclass
class Setup:
    process: LbxProcess
    plain: str
    tls: str
    ca: trustme.CA
    observed: Observed


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("grpc")
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    backend_cert = ca.issue_cert(SERVER_NAME)
    proxy_cert = ca.issue_cert(PROXY_NAME)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in proxy_cert.cert_chain_pems))
    proxy_cert.private_key_pem.write_to_path(str(key_file))
    observed = Observed()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((echo_service(observed),))
    plain_port = server.add_insecure_port("127.0.0.1:0")
    credentials = grpc.ssl_server_credentials(
        [
            (
                backend_cert.private_key_pem.bytes(),
                b"".join(blob.bytes() for blob in backend_cert.cert_chain_pems),
            )
        ]
    )
    tls_port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        services = [
            {
                "name": "grpc",
                "listen": ["127.0.0.1:0"],
                "h2c": True,
                "upstream_http_version": 2,
                "upstreams": [f"127.0.0.1:{plain_port}"],
            },
            {
                "name": "grpcs",
                "tls_listen": ["127.0.0.2:0"],
                "certificates": [{"cert": str(cert_file), "key": str(key_file)}],
                "upstream_http_version": "auto",
                "tls": True,
                "sni": SERVER_NAME,
                "upstreams": [f"127.0.0.1:{tls_port}"],
            },
        ]
        conf = directory / "lbx.yaml"
        conf.write_text(
            yaml.safe_dump(
                {"plugins": ["roundrobin"], "ca_file": str(ca_file), "services": services}
            )
        )
        with LbxProcess("-c", str(conf)) as process:
            plain, tls = process.addresses
            yield Setup(process, plain, tls, ca, observed)
            assert process.proc is not None and process.proc.poll() is None, process.output
    finally:
        server.stop(None)


_OPTIONS = [("grpc.enable_http_proxy", 0)]


@pytest.fixture(params=["h2c", "tls"])
def channel(request: pytest.FixtureRequest, setup: Setup) -> Iterator[grpc.Channel]:
    if request.param == "h2c":
        made = grpc.insecure_channel(setup.plain, options=_OPTIONS)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=setup.ca.cert_pem.bytes())
        made = grpc.secure_channel(
            setup.tls,
            credentials,
            options=[*_OPTIONS, ("grpc.ssl_target_name_override", PROXY_NAME)],
        )
    with made:
        yield made


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def test_unary_with_metadata_and_trailers(channel: grpc.Channel, setup: Setup) -> None:
    call = channel.unary_unary(method("Unary"))
    response, outcome = call.with_call(
        b"hello", timeout=TIMEOUT, metadata=(("x-request", "from-client"),)
    )
    assert response == b"echo:hello"
    assert outcome.code() == grpc.StatusCode.OK
    assert ("x-trailer", "unary") in outcome.trailing_metadata()
    assert setup.observed.metadata["x-request"] == "from-client"


def test_server_streaming(channel: grpc.Channel) -> None:
    replies = list(channel.unary_stream(method("ServerStream"))(b"200", timeout=TIMEOUT))
    assert len(replies) == 200
    assert all(reply.startswith(b"%d:" % index) for index, reply in enumerate(replies))


def test_client_streaming(channel: grpc.Channel) -> None:
    requests = (b"c" * CHUNK for _ in range(200))
    reply = channel.stream_unary(method("ClientStream"))(requests, timeout=TIMEOUT)
    assert reply == b"200 messages, %d bytes" % (200 * CHUNK)


def test_bidirectional_streaming_in_lockstep(channel: grpc.Channel) -> None:
    """Each reply comes back before the next request is sent: both directions stream at once
    through lbx (no buffering of a whole body)."""
    outbox: list[bytes] = []
    ready = threading.Semaphore(0)

    def requests() -> Iterator[bytes]:
        for index in range(50):
            message = b"%d-" % index + b"b" * 1000
            outbox.append(message)
            yield message
            ready.acquire()  # the reply to this message arrived

    replies = []
    for reply in channel.stream_stream(method("Bidi"))(requests(), timeout=TIMEOUT):
        replies.append(reply)
        ready.release()
    assert replies == [message[::-1] for message in outbox]


def test_error_status_and_message_trailers_only(channel: grpc.Channel) -> None:
    """A failing call is a trailers-only answer (grpc-status, grpc-message in the head)."""
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(method("Fail"))(b"x", timeout=TIMEOUT)
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert error.details() == "no such thing: x"  # type: ignore[attr-defined]


def test_deadline_exceeded_cancels_the_server_call(channel: grpc.Channel, setup: Setup) -> None:
    """The client's deadline passes: DEADLINE_EXCEEDED, and the server's call is cancelled
    (the grpc-timeout field and the client's RST_STREAM both reached it)."""
    observed = setup.observed
    observed.slow_started.clear()
    observed.slow_cancelled.clear()
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(method("Slow"))(b"x", timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert observed.slow_cancelled.wait(TIMEOUT)
    assert channel.unary_unary(method("Unary"))(b"after", timeout=TIMEOUT) == b"echo:after"


def test_client_cancel_resets_the_upstream_stream(channel: grpc.Channel, setup: Setup) -> None:
    """The client cancels a call in flight: RST_STREAM to lbx, then from lbx to the server,
    whose call is cancelled; the channel goes on."""
    observed = setup.observed
    observed.slow_started.clear()
    observed.slow_cancelled.clear()
    future = channel.unary_unary(method("Slow")).future(b"x", timeout=TIMEOUT)
    assert observed.slow_started.wait(TIMEOUT)
    assert not observed.slow_cancelled.is_set()
    future.cancel()
    assert observed.slow_cancelled.wait(TIMEOUT)
    assert future.cancelled()
    assert channel.unary_unary(method("Unary"))(b"after", timeout=TIMEOUT) == b"echo:after"
