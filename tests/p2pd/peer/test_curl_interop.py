"""curl, a standard HTTP client, against a real p2pd (docs/protocol.md §4).

curl is a member here: its own certificate, registered with the registry by
a hand-signed request (tests/hostile/attacker.py).  Peer certificates name
no host (docs/protocol.md §1), and curl checks the host name whenever it
verifies against a CA file, so ``--cacert`` alone cannot succeed: the
serving member is pinned by its public key (``--pinnedpubkey``, checked even
with ``-k``), and one test shows that with ``--cacert`` the chain is trusted
and only the name check fails.  curl's certificate is its own (self-signed), so
curl names itself by SNI as a foreign member must (docs/protocol.md §1): the
URL's host is its member id, which ``--resolve`` maps to the serving address.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from p2pd.tls.identity import CERT_FILE
from tests.hostile.attacker import Attacker, Closed, peer_get, poll, register
from tests.support import RunningPeer, run_p2pd, run_registryd

CURL = shutil.which("curl")
DATA = os.urandom(700_000)
DIGEST = hashlib.sha256(DATA).hexdigest()
FAST = "heartbeat_interval = 0.5\n"


def need_curl() -> str:
    if CURL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is not installed: add it to .ci/run's apt packages")
        pytest.skip("curl is not installed (apt-get install curl)")
    return CURL


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    stderr: str


@dataclass
class Curl:
    binary: str
    bob: RunningPeer
    member: Attacker
    folder: Path

    def pin(self) -> str:
        cert = x509.load_pem_x509_certificate((self.bob.state_dir / CERT_FILE).read_bytes())
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def __call__(
        self,
        target: str,
        *args: str,
        client_cert: Attacker | None = None,
        pinned: bool = True,
        named: bool = True,
    ) -> Answer:
        """Run curl once; the status, headers (lowercased names) and body it got.

        ``named``: the URL's host is the member's id (sent as SNI), else 127.0.0.1."""
        who = client_cert or self.member
        head, body = self.folder / "head.txt", self.folder / "body.bin"
        for stale in (head, body):
            stale.unlink(missing_ok=True)
        trust = ["-k", "--pinnedpubkey", self.pin()] if pinned else []
        result = subprocess.run(
            [
                self.binary,
                *("-sS", "--http1.1", "--max-time", "20"),
                *("--cert", str(who.cert_path), "--key", str(who.key_path)),
                *trust,
                *("-D", str(head), "-o", str(body)),
                # The URL's host is sent as SNI: our id, at bob's address.
                *("--resolve", f"{who.id}:{self.bob.port}:127.0.0.1"),
                *args,
                f"https://{who.id if named else '127.0.0.1'}:{self.bob.port}{target}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            return Answer(0, {}, b"", result.stderr)
        status_line, *lines = head.read_bytes().decode("latin-1").strip().splitlines()
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        data = body.read_bytes() if body.exists() else b""
        return Answer(int(status_line.split()[1]), headers, data, result.stderr)


def admitted(port: int, who: Attacker) -> None:
    def check() -> bool:
        try:
            return peer_get(port, who, "/files").status == 200
        except (Closed, OSError):  # ssl.SSLError is an OSError
            return False

    poll(check, timeout=30, what="p2pd to admit curl's registered certificate", every=0.25)


@pytest.fixture(scope="module")
def curl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Curl]:
    binary = need_curl()
    base = tmp_path_factory.mktemp("curl")
    share = base / "bob" / "share"
    share.mkdir(parents=True)
    (share / "data.bin").write_bytes(DATA)
    with (
        run_registryd(base, {"REGISTRYD_PEER_TTL": "600"}) as registry,
        run_p2pd(base, "bob", [registry.url], extra_config=FAST) as bob,
    ):
        member = Attacker.new(base / "curl-identity")
        assert register(registry.url, member, "curl", 9).status == 200
        admitted(bob.port, member)
        yield Curl(binary, bob, member, base)


def test_curl_lists_and_revalidates_with_its_etag_file(curl: Curl) -> None:
    etags = curl.folder / "etags.txt"
    listing = curl("/files", "--etag-save", str(etags))
    assert listing.status == 200, listing.stderr
    files = {f["path"]: f for f in json.loads(listing.body)["files"]}
    assert files["data.bin"]["sha256"] == DIGEST
    assert listing.headers["etag"] == f'"{json.loads(listing.body)["generation"]}"'
    again = curl("/files", "--etag-compare", str(etags))
    assert (again.status, again.body) == (304, b""), again.stderr
    assert again.headers["etag"] == listing.headers["etag"]
    assert "content-length" not in again.headers  # RFC 9110 §15.4.5
    weak = curl("/files", "-H", f'If-None-Match: "x", W/{listing.headers["etag"]}')
    assert weak.status == 304


def test_curl_downloads_whole_files_with_a_strong_etag(curl: Curl) -> None:
    answer = curl("/files/data.bin")
    assert answer.status == 200, answer.stderr
    assert hashlib.sha256(answer.body).hexdigest() == DIGEST
    assert answer.headers["etag"] == f'"sha256-{DIGEST}"'
    digest = base64.b64encode(bytes.fromhex(DIGEST)).decode()
    assert answer.headers["repr-digest"] == f"sha-256=:{digest}:"
    cached = curl("/files/data.bin", "-H", f"If-None-Match: {answer.headers['etag']}")
    assert (cached.status, cached.body) == (304, b"")


def test_curl_head_range_and_if_range(curl: Curl) -> None:
    etag = f'"sha256-{DIGEST}"'
    head = curl("/files/data.bin", "-I")
    assert head.status == 200, head.stderr
    assert head.headers["content-length"] == str(len(DATA))
    assert head.headers["etag"] == etag and "repr-digest" in head.headers
    assert head.body.count(b"\r\n\r\n") == 1 and head.body.endswith(b"\r\n\r\n")  # -I: head only
    listing_head = curl("/files", "-I")
    assert listing_head.status == 200 and int(listing_head.headers["content-length"]) > 0

    part = curl("/files/data.bin", "-r", "1000-1999")
    assert (part.status, part.body) == (206, DATA[1000:2000]), part.stderr
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(DATA)}"
    head_part = curl("/files/data.bin", "-I", "-r", "1000-1999")
    assert head_part.status == 206 and head_part.headers["content-length"] == "1000"

    resumed = curl("/files/data.bin", "-r", "5000-", "-H", f"If-Range: {etag}")
    assert resumed.status == 206
    assert hashlib.sha256(DATA[:5000] + resumed.body).hexdigest() == DIGEST
    stale = curl("/files/data.bin", "-r", "5000-", "-H", 'If-Range: "sha256-00"')
    assert stale.status == 200 and hashlib.sha256(stale.body).hexdigest() == DIGEST


def test_curl_is_told_why_it_is_refused(curl: Curl) -> None:
    stranger = Attacker.new(curl.folder / "stranger")
    unknown = curl("/files", client_cert=stranger)  # it names itself, but is no member
    assert unknown.status == 0 and "alert unknown ca" in unknown.stderr, unknown.stderr
    # A member that does not name itself (an IP address in the URL: curl sends no SNI):
    # nothing says which certificate to trust beyond the network CA's.
    nameless = curl("/files", named=False)
    assert nameless.status == 0 and "alert unknown ca" in nameless.stderr, nameless.stderr
    old = curl("/files", "--tls-max", "1.2")
    assert old.status == 0 and "alert protocol version" in old.stderr, old.stderr
    # The chain of --cacert is trusted; only the host name (there is none) fails.
    named = curl("/files", "--cacert", str(curl.bob.state_dir / CERT_FILE), pinned=False)
    assert named.status == 0 and "subject name" in named.stderr, named.stderr


def test_a_restarted_member_does_not_answer_304_for_another_listing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    binary = need_curl()
    base = tmp_path_factory.mktemp("restart")
    (base / "bob" / "share").mkdir(parents=True)
    (base / "bob" / "share" / "one.txt").write_bytes(b"one")
    with run_registryd(base, {"REGISTRYD_PEER_TTL": "600"}) as registry:
        member = Attacker.new(base / "curl-identity")
        assert register(registry.url, member, "curl", 9).status == 200
        with run_p2pd(base, "bob", [registry.url], extra_config=FAST) as bob:
            admitted(bob.port, member)
            first = Curl(binary, bob, member, base)("/files")
            assert first.status == 200, first.stderr
        # The same number of changes after the restart, another listing.
        (base / "bob" / "share" / "one.txt").write_bytes(b"uno")
        with run_p2pd(base, "bob", [registry.url], extra_config=FAST) as bob:
            admitted(bob.port, member)
            etag = first.headers["etag"]
            again = Curl(binary, bob, member, base)("/files", "-H", f"If-None-Match: {etag}")
            assert again.status == 200, again.stderr
            assert again.headers["etag"] != etag
            listed = json.loads(again.body)["files"]
            assert listed[0]["sha256"] == hashlib.sha256(b"uno").hexdigest()
