"""The SNI read from a client's first TLS record: real clients' hellos, hostile ones, fuzzing."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.tls.clienthello import ClientHelloError, record_length, server_name

PEER_ID = "mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpiydcmrtgq2d"


def python_hello(
    hostname: str | None,
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    client_cert: bool = False,
) -> bytes:
    """The first bytes Python's ssl sends as a client (the way p2pd connects)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    if client_cert:
        trustme.CA().issue_cert("client.example").configure_cert(context)
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize("client_cert", [False, True])
@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        (PEER_ID, PEER_ID),
        ("Peer.Example.COM", "peer.example.com"),
        ("x", "x"),
        (None, None),
        ("192.0.2.7", None),  # Python's ssl names no IP address
        ("::1", None),
    ],
)
def test_python_clients_hello_gives_its_server_name(
    version: ssl.TLSVersion, client_cert: bool, hostname: str | None, expected: str | None
) -> None:
    record = python_hello(hostname, version, client_cert)
    assert record_length(record[:5]) == len(record) - 5  # one record, all of it sent at once
    assert server_name(record) == expected


def test_a_long_host_name_still_fits_one_record() -> None:
    long_name = ".".join(["a" * 63] * 3) + "." + "b" * 61
    record = python_hello(long_name)
    assert len(long_name) == 253
    assert server_name(record) == long_name


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("version_flag", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize(("servername", "expected"), [(PEER_ID, PEER_ID), (None, None)])
def test_openssl_s_clients_hello_gives_its_server_name(
    version_flag: str, servername: str | None, expected: str | None
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(60)
        port = listener.getsockname()[1]
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version_flag]
        command += ["-servername", servername] if servername else ["-noservername"]
        client = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(60)
                record = read_exactly(connection, 5)
                record += read_exactly(connection, record_length(record))
        finally:
            client.kill()
            client.wait(timeout=60)
            assert client.stdin is not None
            client.stdin.close()
    assert server_name(record) == expected


def read_exactly(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        assert chunk, "the client closed before sending its hello"
        data += chunk
    return data


# Hand-made hellos: every field as an attacker would set it.


def vector(length_size: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + vector(2, data)


def sni(*names: tuple[int, bytes]) -> bytes:
    return extension(0, vector(2, b"".join(bytes([t]) + vector(2, n) for t, n in names)))


def hello(
    extensions: bytes | None = None,
    *,
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
    version: bytes = b"\x03\x03",
    after: bytes = b"",
    message_type: int = 1,
) -> bytes:
    body = version + bytes(32) + vector(1, session_id) + vector(2, suites) + vector(1, compression)
    if extensions is not None:
        body += vector(2, extensions)
    return bytes([message_type]) + vector(3, body + after)


def record(message: bytes, content_type: int = 22, version: bytes = b"\x03\x01") -> bytes:
    return bytes([content_type]) + version + vector(2, message)


SUPPORTED_VERSIONS = extension(43, b"\x02\x03\x04")


def test_hand_made_hellos_that_are_well_formed() -> None:
    assert server_name(record(hello(sni((0, b"peer"))))) == "peer"
    assert (
        server_name(record(hello(SUPPORTED_VERSIONS + sni((0, b"p")) + extension(10, b"")))) == "p"
    )
    assert server_name(record(hello(None))) is None  # TLS 1.0 without extensions
    assert server_name(record(hello(b""))) is None
    assert server_name(record(hello(SUPPORTED_VERSIONS))) is None
    assert server_name(record(hello(sni((0, b"n")), session_id=bytes(32)))) == "n"
    assert server_name(record(hello(sni((0, b"n")), version=b"\x03\x01"))) == "n"
    assert server_name(bytearray(record(hello(sni((0, b"a_b-c.d")))))) == "a_b-c.d"


MALFORMED = [
    (record(hello(sni((0, b"a"), (0, b"b")))), "stray bytes after the server name list"),
    (record(hello(sni((1, b"a")))), "not of type host_name"),
    (record(hello(sni((0, b"")))), "host name has 0 bytes"),
    (record(hello(extension(0, b""))), "2-byte number needs 2 bytes"),
    (record(hello(extension(0, b"\x00\x00"))), "server name list has 0 bytes"),
    (record(hello(extension(0, vector(2, b"\x00\x00\x01a") + b"x"))), "stray bytes"),
    (record(hello(sni((0, b"a b")))), "not a host name"),
    (record(hello(sni((0, b"a\x00b")))), "not a host name"),
    (record(hello(sni((0, "é".encode())))), "not a host name"),
    (record(hello(sni((0, b"a" * 256)))), "not a host name"),
    (record(hello(sni((0, b"a")) + sni((0, b"b")))), "extension 0 appears twice"),
    (record(hello(SUPPORTED_VERSIONS + SUPPORTED_VERSIONS)), "extension 43 appears twice"),
    (record(hello(sni((0, b"a")), suites=b"\x13\x01\x13")), "odd length"),
    (record(hello(sni((0, b"a")), suites=b"")), "cipher suites has 0 bytes"),
    (record(hello(sni((0, b"a")), compression=b"")), "compression methods has 0 bytes"),
    (record(hello(sni((0, b"a")), session_id=bytes(33))), "session id has 33 bytes"),
    (record(hello(sni((0, b"a")), version=b"\x03\x00")), "version is not TLS"),
    (record(hello(sni((0, b"a")), version=b"\x03\x05")), "version is not TLS"),
    (record(hello(sni((0, b"a")), message_type=2)), "not a ClientHello"),
    (record(hello(sni((0, b"a")), after=b"\x00")), "stray bytes after the ClientHello"),
    (record(hello(sni((0, b"a"))) + b"\x01"), "stray bytes after the record"),
    (record(hello(sni((0, b"a"))), content_type=23), "not a TLS handshake"),
    (record(hello(sni((0, b"a"))), version=b"\x03\x00"), "record version 0x0300"),
    (record(hello(sni((0, b"a"))), version=b"\x03\x05"), "record version 0x0305"),
    (record(hello(sni((0, b"a"))), version=b"\x02\x01"), "record version 0x0201"),
    (record(hello(sni((0, b"a"))))[:-1], "bytes after its header, its header says"),
    (record(hello(sni((0, b"a")))) + b"x", "bytes after its header, its header says"),
    (b"\x16\x03\x01\x00\x00", "record length 0"),
    (b"\x16\x03\x01\x40\x01" + bytes(16385), "record length 16385"),
    (b"GET / HTTP/1.1\r\n\r\n", "not a TLS handshake"),
    (b"\x16\x03", "a record header is 5 bytes, not 2"),
    (b"", "a record header is 5 bytes, not 0"),
    (b"\x80\x2e\x01\x00\x02", "not a TLS handshake"),  # an SSLv2-style hello
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED, ids=[reason for _, reason in MALFORMED])
def test_malformed_hellos_are_refused_saying_why(data: bytes, reason: str) -> None:
    with pytest.raises(ClientHelloError, match=reason):
        server_name(data)


def test_a_hello_split_over_records_is_refused() -> None:
    whole = hello(sni((0, b"peer")))
    first = record(whole[:20])
    with pytest.raises(ClientHelloError, match="split over several records"):
        server_name(first)


@pytest.mark.parametrize(
    "header", [b"\x16\x03\x01\x00\x01", b"\x16\x03\x03\x40\x00", b"\x16\x03\x04\x02\x00"]
)
def test_record_length_reads_a_handshake_header(header: bytes) -> None:
    assert record_length(header) == int.from_bytes(header[3:], "big")


REAL = [
    python_hello(PEER_ID),
    python_hello(PEER_ID, ssl.TLSVersion.TLSv1_2),
    record(hello(SUPPORTED_VERSIONS + sni((0, b"peer")) + extension(16, b"\x00\x03h2"))),
]


VERSIONS = [b"\x03\x01", b"\x03\x02", b"\x03\x03", b"\x03\x04"]


def answer_or_refusal(data: bytes | bytearray | memoryview) -> str | None | ClientHelloError:
    try:
        return server_name(data)
    except ClientHelloError as refusal:
        return refusal


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_are_refused_and_nothing_else(data: bytes) -> None:
    assert isinstance(answer_or_refusal(data), ClientHelloError | str | None)
    header = data[:5]
    length = int.from_bytes(header[3:5], "big")
    if len(header) == 5 and header[0] == 22 and header[1:3] in VERSIONS and 1 <= length <= 2**14:
        assert record_length(header) == length
    else:
        with pytest.raises(ClientHelloError):
            record_length(header)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_hello_bodies_are_refused_and_nothing_else(body: bytes) -> None:
    """Past the record and handshake headers, where the hard part of the parsing is."""
    answer = answer_or_refusal(record(bytes([1]) + vector(3, b"\x03\x03" + bytes(32) + body)))
    assert isinstance(answer, ClientHelloError | str | None)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(REAL), st.data())
def test_lying_bytes_in_a_real_hello_give_a_name_or_a_refusal(
    real: bytes, data: st.DataObject
) -> None:
    changed = bytearray(real)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(real) - 1))
        changed[at] = data.draw(st.integers(0, 255))
    answer = answer_or_refusal(bytes(changed))
    assert isinstance(answer, ClientHelloError | str | None)
    if isinstance(answer, str):
        assert answer.encode("ascii") in bytes(changed).lower()


@pytest.mark.parametrize("real", REAL, ids=["python-tls1.3", "python-tls1.2", "hand-made"])
def test_every_truncation_is_refused_even_with_the_outer_lengths_fixed(real: bytes) -> None:
    for end in range(len(real)):
        with pytest.raises(ClientHelloError):
            server_name(real[:end])
        if end > 9:  # a record whose own length, and the hello's, claim just what is left
            cut = record(bytes([1]) + vector(3, real[9:end]))
            # Cut just after the compression methods, it is a hello without extensions.
            assert answer_or_refusal(cut) is None or isinstance(
                answer_or_refusal(cut), ClientHelloError
            )


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(REAL), st.binary(min_size=1, max_size=64))
def test_nothing_past_the_end_is_read(real: bytes, beyond: bytes) -> None:
    buffer = memoryview(real + beyond)
    assert answer_or_refusal(buffer[: len(real)]) == server_name(real)
