"""Issue 20 against the registry's members: an attacker holding the network secret.

- it takes another member's id and certificate from ``GET /clients`` and
  registers them with its own name and addresses, or heartbeats or leaves for
  it: refused, the member's record untouched (the key proof and the lease);
- it floods the registry with identities of huge records: bounded records,
  and new ids from one source address limited (429), members never;
- an odd record in Redis (a field that is not JSON, a missing certificate)
  does not make lookups, pages or the member list fail: skipped, the others answered.
"""

from __future__ import annotations

import datetime
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.hostile.attacker import (
    Attacker,
    RawResponse,
    build_request,
    http,
    joined,
    members,
    poll,
    register,
    registry_port,
    sign,
    signed,
)
from tests.support import RunningRegistry, run_registryd


@pytest.fixture(scope="module")
def registry(module_dir: Path) -> Iterator[RunningRegistry]:
    with run_registryd(module_dir) as running:
        yield running


def record_of(url: str, member_id: str) -> dict[str, object]:
    (record,) = [m for m in members(url) if m["id"] == member_id]
    return record


def refused(answer: RawResponse, status: int, error: str) -> None:
    assert (answer.status, answer.json()["error"]) == (status, error), answer


# -- a member's record: only its key changes it, only its lease renews or ends it ----


def test_knowing_a_members_certificate_is_not_enough(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    url = registry.url
    bob, mallory = Attacker.new(tmp_path / "bob"), Attacker.new(tmp_path / "mallory")
    bob_lease = joined(url, bob, "bob", 7070, addresses=["127.0.0.1:7070"])
    before = record_of(url, bob.id)
    # Everything mallory needs is in the member list: bob's id and certificate.
    taken = {
        "id": before["id"],
        "name": "bob",
        "cert": before["cert"],
        "port": 6666,
        "addresses": ["203.0.113.66:6666"],
    }
    refused(signed(url, "POST", "/register", taken), 401, "bad member signature")
    with_her_key = signed(url, "POST", "/register", taken, member=(bob.id, mallory.key()))
    refused(with_her_key, 401, "bad member signature")
    assert "does not verify" in with_her_key.json()["message"]
    for path in ("/heartbeat", "/leave"):
        guessed = {"id": bob.id, "lease": secrets.token_urlsafe(16)}
        refused(signed(url, "POST", path, guessed), 403, "wrong lease")
    assert record_of(url, bob.id)["addresses"] == before["addresses"] == ["127.0.0.1:7070"]
    # Bob's own lease still renews him.
    assert signed(url, "POST", "/heartbeat", {"id": bob.id, "lease": bob_lease}).status == 200


def test_a_members_proof_cannot_be_lifted_into_another_body(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """Mallory intercepts bob's register before it arrives and sends it with her addresses,
    re-signing ``sig`` (she has the secret) with bob's created and nonce."""
    url = registry.url
    bob = Attacker.new(tmp_path / "bob")
    bob_lease = joined(url, bob, "bob", 7070, addresses=["127.0.0.1:7070"])
    mine = {"id": bob.id, "name": "bob", "cert": bob.cert_pem, "port": 7070}
    body = json.dumps({**mine, "addresses": ["127.0.0.1:7070"]}).encode()
    created, nonce = int(time.time()), secrets.token_urlsafe(16)
    bobs = sign("POST", "/register", body, created=created, nonce=nonce, member=(bob.id, bob.key()))
    hers = json.dumps({**mine, "addresses": ["203.0.113.66:6666"]}).encode()
    lifted = sign("POST", "/register", hers, created=created, nonce=nonce)
    lifted["Signature-Input"] += ", " + bobs["Signature-Input"].split(", ", 1)[1]
    lifted["Signature"] += ", " + bobs["Signature"].split(", ", 1)[1]
    raw = build_request("POST", "/register", {**lifted, "Content-Type": "application/json"}, hers)
    refused(http(registry_port(url), raw), 401, "bad member signature")
    assert record_of(url, bob.id)["addresses"] == ["127.0.0.1:7070"]
    assert signed(url, "POST", "/heartbeat", {"id": bob.id, "lease": bob_lease}).status == 200


def test_a_register_again_gives_a_new_lease_and_retires_the_old_one(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    url = registry.url
    bob = Attacker.new(tmp_path / "bob")
    first = joined(url, bob, "bob", 7070)
    second = joined(url, bob, "bob", 7070)
    assert first != second
    refused(signed(url, "POST", "/leave", {"id": bob.id, "lease": first}), 403, "wrong lease")
    assert signed(url, "POST", "/leave", {"id": bob.id, "lease": second}).status == 200
    assert bob.id not in [m["id"] for m in members(url)]


# -- a flood of identities --------------------------------------------------------------


def big_certificate(directory: Path, size: int) -> Attacker:
    """A self-signed certificate padded with DNS names to about ``size`` bytes of PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"flood {secrets.token_hex(4)}")])
    names = [x509.DNSName(f"{'a' * 60}{i}.example") for i in range(size // 100)]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Attacker.of(directory, cert, key)


def test_one_registration_carries_a_bounded_record(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """The flood of the issue: 16 KiB certificates and 16 addresses of 259 characters."""
    url, source = registry.url, "127.0.0.61"
    fat = big_certificate(tmp_path / "fat", 16 * 1024)
    assert len(fat.cert_pem) > 10 * 1024
    answer = register(url, fat, "fat", 9, source=source)
    assert answer.status == 400 and "'cert'" in answer.json()["message"], answer
    who = Attacker.new(tmp_path / "who")
    long_address = f"{'h' * 63}.{'o' * 63}.{'s' * 63}.{'t' * 62}:7070"  # 259 characters
    for fields, field in (
        ({"addresses": [f"10.0.0.{i}:7070" for i in range(16)]}, "addresses"),
        ({"addresses": [long_address]}, "addresses.0"),
        ({"addresses": ["10.0.0.1:7070"] * 9}, "addresses"),
    ):
        answer = register(url, who, "who", 9, source=source, **fields)
        assert answer.status == 400, answer
        assert f"field '{field}'" in answer.json()["message"], answer
    answer = register(url, who, "n" * 65, 9, source=source)
    assert answer.status == 400 and "field 'name'" in answer.json()["message"], answer
    assert [m for m in members(url) if m["id"] in (fat.id, who.id)] == []
    # At the bounds, accepted: 8 addresses of 128 characters.
    at_bound = [f"{'a' * 63}.{'b' * 58}{i}:7070" for i in range(8)]
    assert all(len(address) == 128 for address in at_bound)
    assert register(url, who, "w" * 64, 9, source=source, addresses=at_bound).status == 200


def test_new_ids_from_one_address_are_limited_members_are_not(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """Burst 60, then 1 a second, per source address; renewing a record takes nothing."""
    url, source = registry.url, "127.0.0.62"
    identities = [Attacker.new(tmp_path / f"i{i}") for i in range(80)]
    started = time.monotonic()
    answers = [register(url, who, f"i{i}", 9, source=source) for i, who in enumerate(identities)]
    elapsed = time.monotonic() - started
    accepted = [a for a in answers if a.status == 200]
    limited = [a for a in answers if a.status == 429]
    assert len(accepted) + len(limited) == len(answers), [a.status for a in answers]
    assert 60 <= len(accepted) <= 60 + elapsed * 1.0 + 1, (len(accepted), elapsed)
    for answer in limited:
        assert answer.json()["error"] == "too many new members"
        assert int(answer.headers["retry-after"]) >= 1
    # A member registered before renews its record from the limited address...
    first = identities[0]
    assert register(url, first, "renamed", 9, source=source).status == 200
    # ...another address is not slowed...
    assert (
        register(url, Attacker.new(tmp_path / "other"), "o", 9, source="127.0.0.63").status == 200
    )
    # ...and the limited one gets a new id in again once its wait is over.
    late = Attacker.new(tmp_path / "late")
    poll(
        lambda: register(url, late, "late", 9, source=source).status == 200,
        timeout=30,
        every=0.5,
        what="the limited address to register a new id again",
    )
    assert (
        b"registry_new_members_limited_total"
        in http(registry_port(url), build_request("GET", "/metrics", {})).body
    )


# -- odd records in the store ----------------------------------------------------------


def damage_record(redis_url: str, member_id: str, damage: dict[str, str]) -> None:
    with redis.Redis.from_url(redis_url) as store:
        for field, value in damage.items():
            store.hset(f"p2p:m:{member_id}", field, value)


@pytest.mark.parametrize(
    "damage",
    [
        {"addresses": "not json ["},
        {"addresses": '{"a": 1}'},
        {"name": "n" * 500},
        {"cert": "not a certificate"},
    ],
)
def test_an_odd_record_in_redis_is_skipped_not_fatal(
    tmp_path: Path, redis_url: str, damage: dict[str, str]
) -> None:
    redis.Redis.from_url(redis_url).flushall()
    with run_registryd(tmp_path, {"REGISTRYD_STORE": redis_url}) as registry:
        url = registry.url
        good, odd = Attacker.new(tmp_path / "good"), Attacker.new(tmp_path / "odd")
        joined(url, good, "good", 7070)
        joined(url, odd, "good", 7070)
        damage_record(redis_url, odd.id, damage)
        assert [m["id"] for m in members(url)] == [good.id]
        page = signed(url, "GET", "/members", query="?limit=10")
        assert page.status == 200 and [m["id"] for m in page.json()["members"]] == [good.id]
        named = signed(url, "GET", "/resolve/good")
        assert named.status == 200 and [m["id"] for m in named.json()["members"]] == [good.id]
        looked_up = signed(url, "GET", f"/members/{odd.id}")
        assert (looked_up.status, looked_up.json()["error"]) == (404, "unknown member")
        # Its next register writes a good record again.
        joined(url, odd, "odd", 7071)
        assert signed(url, "GET", f"/members/{odd.id}").status == 200
        assert "skipped the member record" in registry.log()
        assert "Traceback" not in registry.log()
