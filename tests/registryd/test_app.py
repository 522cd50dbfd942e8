"""The registry API without sockets: RegistryApp driven by requests and a fake clock."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from p2pcommon.http.events import Request, Response
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.guards import NewMemberLimiter
from registryd.metrics import RegistryMetrics
from registryd.store import MemoryStore
from tests.hostile.attacker import content_digest, sign
from tests.registryd.conftest import Clock, signed
from tests.support import SECRET, Peer


def payload(response: Response) -> Any:
    return json.loads(response.body)


async def register(app: RegistryApp, peer: Peer, now: float, **extra: Any) -> Response:
    body = {"id": peer.id, "name": peer.name, "cert": peer.cert, "port": 7070, **extra}
    return await app.handle(signed("POST", "/register", body, now=now, member=peer))


async def lease_of(app: RegistryApp, peer: Peer, now: float) -> str:
    """Register ``peer``; the lease token its heartbeats and leave show."""
    response = await register(app, peer, now)
    assert response.status == 200, response.body
    token: str = payload(response)["lease"]
    return token


async def listed(app: RegistryApp, now: float) -> list[dict[str, Any]]:
    """Every live member, by id (one page: the tests have fewer than 1000)."""
    response = await app.handle(signed("GET", "/members?limit=1000", now=now))
    assert response.status == 200
    members: list[dict[str, Any]] = payload(response)["members"]
    return members


async def test_register_answers_the_lease(app: RegistryApp, clock: Clock) -> None:
    response = await register(app, Peer.new(), clock.now)
    assert response.status == 200
    lease = payload(response)
    assert list(lease) == ["ttl", "heartbeat_interval", "lease", "members"]
    assert (lease["ttl"], lease["heartbeat_interval"], lease["members"]) == (30.0, 10.0, 1)
    # 128 random bits, base64url; a new one at every register.
    assert len(lease["lease"]) == 22
    again = payload(await register(app, Peer.new(), clock.now))
    assert again["lease"] != lease["lease"]
    assert again["members"] == 2


async def test_source_address_is_recorded_when_none_is_advertised(
    app: RegistryApp, clock: Clock
) -> None:
    alice, bob = Peer.new("alice"), Peer.new("bob")
    await register(app, alice, clock.now)
    await register(app, bob, clock.now, addresses=["peer.example:7171", "[2001:db8::1]:7070"])
    by_name = {c["name"]: c for c in await listed(app, clock.now)}
    assert by_name["alice"]["addresses"] == ["192.0.2.10:7070"]
    assert by_name["bob"]["addresses"] == ["peer.example:7171", "[2001:db8::1]:7070"]
    assert by_name["alice"]["cert"] == alice.cert
    assert by_name["alice"]["id"] == alice.id
    assert by_name["alice"]["last_seen"] == pytest.approx(clock.now)


async def test_an_id_that_is_not_the_hash_of_the_cert_is_refused(
    app: RegistryApp, clock: Clock
) -> None:
    alice, mallory = Peer.new("alice"), Peer.new("mallory")
    body = {"id": alice.id, "name": "mallory", "cert": mallory.cert, "port": 7070}
    response = await app.handle(signed("POST", "/register", body, now=clock.now))
    assert response.status == 400
    assert payload(response)["error"] == "id mismatch"
    assert await listed(app, clock.now) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "cert": "c", "port": 1}, "id"),
        ({"id": "A" * 52, "name": "x", "cert": "c", "port": 1}, "id"),
        ("not an object", "body"),
        ({"id": "a" * 52, "name": "x", "cert": "c", "port": 0}, "port"),
        (
            {"id": "a" * 52, "name": "x", "cert": "c", "port": 1, "addresses": ["nope"]},
            "addresses.0",
        ),
        ({"id": "a" * 52, "name": "", "cert": "c", "port": 1}, "name"),
    ],
)
async def test_malformed_register_names_the_field(
    app: RegistryApp, clock: Clock, body: Any, field: str
) -> None:
    response = await app.handle(signed("POST", "/register", body, now=clock.now))
    assert response.status == 400
    assert f"field '{field}'" in payload(response)["message"]


async def test_invalid_json_is_a_400(app: RegistryApp, clock: Clock) -> None:
    request = signed("POST", "/heartbeat", None, now=clock.now)
    headers, _ = Signer(SECRET).sign_request("POST", "/heartbeat", b"{nope", now=clock.now)
    request.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    request.body = b"{nope"
    response = await app.handle(request)
    assert response.status == 400
    assert "JSON" in payload(response)["message"]


async def test_lease_lifecycle_with_a_fake_clock(app: RegistryApp, clock: Clock) -> None:
    peer = Peer.new()
    token = await lease_of(app, peer, clock.now)
    clock.now += 25
    body = {"id": peer.id, "lease": token}
    beat = await app.handle(signed("POST", "/heartbeat", body, now=clock.now))
    assert beat.status == 200
    # The lease stays the register's.
    assert payload(beat) == {"ttl": 30.0, "heartbeat_interval": 10.0, "members": 1}
    clock.now += 25  # 50 s after registering, 25 s after the heartbeat
    assert [c["id"] for c in await listed(app, clock.now)] == [peer.id]
    clock.now += 5
    assert await listed(app, clock.now) == []
    late = await app.handle(signed("POST", "/heartbeat", body, now=clock.now))
    assert late.status == 404
    assert "register again" in payload(late)["message"]


async def test_leave_removes_at_once_and_unknown_leave_is_404(
    app: RegistryApp, clock: Clock
) -> None:
    peer = Peer.new()
    body = {"id": peer.id, "lease": await lease_of(app, peer, clock.now)}
    left = await app.handle(signed("POST", "/leave", body, now=clock.now))
    assert left.status == 200
    assert await listed(app, clock.now) == []
    again = await app.handle(signed("POST", "/leave", body, now=clock.now))
    assert again.status == 404


async def test_only_the_last_registers_lease_renews_or_ends_a_member(
    app: RegistryApp, clock: Clock
) -> None:
    peer = Peer.new()
    old = await lease_of(app, peer, clock.now)
    new = await lease_of(app, peer, clock.now + 1)
    for path in ("/heartbeat", "/leave"):
        body = {"id": peer.id, "lease": old}
        refused = await app.handle(signed("POST", path, body, now=clock.now + 2))
        assert (refused.status, payload(refused)["error"]) == (403, "wrong lease")
    assert [c["id"] for c in await listed(app, clock.now + 2)] == [peer.id]
    # Refused without a lease at all (a body of an older p2pd): 400, nothing changed.
    bare = await app.handle(signed("POST", "/heartbeat", {"id": peer.id}, now=clock.now + 2))
    assert (bare.status, payload(bare)["message"]) == (400, "field 'lease': Field required")
    body = {"id": peer.id, "lease": new}
    assert (await app.handle(signed("POST", "/leave", body, now=clock.now + 3))).status == 200


async def test_answers_are_signed_with_the_request_nonce(app: RegistryApp, clock: Clock) -> None:
    signer = Signer(SECRET)
    headers, nonce = signer.sign_request("GET", "/clients", b"", now=clock.now)
    request = Request(
        "GET", "/clients", [(k.lower().encode(), v.encode()) for k, v in headers.items()], b"", "h"
    )
    response = await app.handle(request)
    signer.verify_response(
        response.status, response.headers, response.body, nonce=nonce, now=clock.now
    )


async def test_a_sha512_request_is_answered_with_a_sha256_digest(
    app: RegistryApp, clock: Clock
) -> None:
    """docs/protocol.md §2.1/§2.2: the registry accepts sha-512; its answers carry sha-256."""
    digest = "sha-512=:" + base64.b64encode(hashlib.sha512(b"").digest()).decode() + ":"
    headers = sign("GET", "/clients", b"", created=int(clock.now), nonce="n-512", digest=digest)
    fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    response = await app.handle(Request("GET", "/clients", fields, b"", "192.0.2.3"))
    assert response.status == 200, response.body
    answer = dict(response.headers)
    assert answer["Content-Digest"] == content_digest(response.body)  # sha-256=:…:
    Signer(SECRET).verify_response(
        response.status, response.headers, response.body, nonce="n-512", now=clock.now
    )


async def test_replay_is_refused_within_the_window(app: RegistryApp, clock: Clock) -> None:
    request = signed("GET", "/clients", now=clock.now)
    assert (await app.handle(request)).status == 200
    clock.now += 30
    replay = await app.handle(request)
    assert replay.status == 401
    assert payload(replay)["error"] == "replayed"
    clock.now += 31  # now stale rather than replayed
    assert payload(await app.handle(request))["error"] == "stale"


async def test_failures_are_rate_limited_per_address(app: RegistryApp, clock: Clock) -> None:
    statuses = []
    for _ in range(25):
        bad = signed("GET", "/clients", now=clock.now, host="203.0.113.5", secret="wrong-secret!")
        response = await app.handle(bad)
        statuses.append(response.status)
    assert statuses[:20] == [401] * 20
    assert set(statuses[20:]) == {429}
    limited = await app.handle(
        signed("GET", "/clients", now=clock.now, host="203.0.113.5", secret="wrong-secret!")
    )
    assert dict(limited.headers)["Retry-After"] == "60"
    # A correctly signed request from the same address still gets through ...
    good = await app.handle(signed("GET", "/clients", now=clock.now, host="203.0.113.5"))
    assert good.status == 200
    # ... and another address is not slowed.
    other = await app.handle(
        signed("GET", "/clients", now=clock.now, host="203.0.113.6", secret="wrong-secret!")
    )
    assert other.status == 401
    clock.now += 61
    later = await app.handle(
        signed("GET", "/clients", now=clock.now, host="203.0.113.5", secret="wrong-secret!")
    )
    assert later.status == 401


async def test_unknown_route_and_wrong_method(app: RegistryApp, clock: Clock) -> None:
    assert (await app.handle(signed("GET", "/nope", now=clock.now))).status == 404
    wrong = await app.handle(signed("GET", "/register", now=clock.now))
    assert wrong.status == 405
    assert ("Allow", "POST") in wrong.headers


async def test_metrics_count_events_and_hold_no_secret(app: RegistryApp, clock: Clock) -> None:
    peer = Peer.new()
    body = {"id": peer.id, "lease": await lease_of(app, peer, clock.now)}
    await app.handle(signed("POST", "/heartbeat", body, now=clock.now))
    await app.handle(signed("GET", "/clients", now=clock.now, secret="wrong-secret!"))
    response = await app.handle(Request("GET", "/metrics", [], b"", "h"))
    text = response.body.decode()
    assert "registry_members 1.0" in text
    assert "registry_registrations_total 1.0" in text
    assert "registry_heartbeats_total 1.0" in text
    assert 'registry_auth_failures_total{reason="bad signature"} 1.0' in text
    assert 'registry_request_duration_seconds_bucket{le="0.005",route="/register"}' in text
    assert SECRET not in text
    assert peer.id not in text


@pytest.mark.parametrize(
    "extra",
    [
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "trailing text that is no certificate\n",
    ],
)
async def test_only_the_certificate_itself_reaches_the_members(
    app: RegistryApp, clock: Clock, extra: str
) -> None:
    """Extra blocks after a valid certificate would poison every member's trust store."""
    alice = Peer.new("alice")
    body = {"id": alice.id, "name": "alice", "cert": alice.cert + extra, "port": 7070}
    response = await app.handle(signed("POST", "/register", body, now=clock.now, member=alice))
    if extra.startswith("-----BEGIN"):
        assert response.status == 400
        assert payload(response)["error"] == "bad certificate"
        assert await listed(app, clock.now) == []
    else:
        assert response.status == 200
        (member,) = await listed(app, clock.now)
        assert member["cert"] == alice.cert  # re-encoded: the trailing text is gone


async def test_new_ids_from_one_source_are_limited_members_are_not(clock: Clock) -> None:
    app = RegistryApp(
        Signer(SECRET),
        MemoryStore(),
        RegistryMetrics(),
        newcomers=NewMemberLimiter(burst=2, rate=0.5),
        clock=clock,
    )

    async def join(peer: Peer, host: str) -> Response:
        body = {"id": peer.id, "name": peer.name, "cert": peer.cert, "port": 7070}
        request = signed("POST", "/register", body, now=clock.now, host=host, member=peer)
        return await app.handle(request)

    alice, bob, carol = Peer.new("alice"), Peer.new("bob"), Peer.new("carol")
    # One IPv6 host: every address of its /64 shares one bucket.
    assert (await join(alice, "2001:db8:0:1::a")).status == 200
    assert (await join(bob, "2001:db8:0:1::b")).status == 200
    limited = await join(carol, "2001:db8:0:1::c")
    assert (limited.status, payload(limited)["error"]) == (429, "too many new members")
    assert dict(limited.headers)["Retry-After"] == "2"
    assert sorted(c["name"] for c in await listed(app, clock.now)) == ["alice", "bob"]
    # A member renews its record however empty the bucket; another /64 is not slowed.
    assert (await join(alice, "2001:db8:0:1::a")).status == 200
    assert (await join(carol, "2001:db8:0:2::c")).status == 200
    clock.now += 2
    assert (await join(Peer.new("dave"), "2001:db8:0:1::d")).status == 200
    metrics = (await app.handle(Request("GET", "/metrics", [], b"", "h"))).body.decode()
    assert "registry_new_members_limited_total 1.0" in metrics


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"addresses": [f"10.0.0.{i}:7070" for i in range(9)]}, "addresses"),
        ({"addresses": ["h" * 124 + ":7070"]}, "addresses.0"),
        ({"name": "n" * 65}, "name"),
    ],
)
async def test_what_one_registration_may_carry_is_bounded(
    app: RegistryApp, clock: Clock, fields: dict[str, Any], field: str
) -> None:
    response = await register(app, Peer.new(), clock.now, **fields)
    assert response.status == 400
    assert f"field '{field}'" in payload(response)["message"]
