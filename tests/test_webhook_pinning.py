"""A tenant's webhook goes to the address that was checked (notifications/pinned_http.py), whatever
the name resolves to afterwards: DNS rebinding, real HTTP and HTTPS servers on loopback addresses.

The one double is the resolver (socket.getaddrinfo, where a name would leave the program): it answers
a name differently on each call, and plays the network too, sending a "public" address (a literal the
real resolver would echo) to a loopback address where a real server listens. The panel's check sees
the public address; where the connection lands is decided by the kernel, not the test.
"""
from __future__ import annotations

import datetime
import socket
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from notifications.choices import DeliveryState, EventKind, Severity
from notifications.notify import notify
from tests.notify_receivers import WebhookReceiver, free_port
from tests.test_notifications import deliver_all, people, webhook_target  # noqa: F401

pytestmark = pytest.mark.django_db

NAME = "hooks.example.org"
# Global addresses (a check lets them through), never reached: the resolver sends them to loopback.
PUBLIC, PUBLIC_2 = "93.184.215.14", "93.184.215.15"
GOOD, EVIL, NOBODY = "127.0.0.2", "127.0.0.1", "127.0.0.3"  # where the receivers listen (or nobody)


class Resolver:
    """socket.getaddrinfo for the names (and literals) in `answers`: each call takes the next answer
    (the last one repeats); every other name is the real resolver's."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.answers: dict[str, list[list[str]]] = {}
        self.asked: Counter[str] = Counter()

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
        if host not in self.answers:
            return self.real(host, port, *args, **kwargs)
        answers = self.answers[host]
        addresses = answers[min(self.asked[host], len(answers) - 1)]
        self.asked[host] += 1
        return [info for address in addresses for info in self.real(address, port, *args, **kwargs)]


@pytest.fixture
def resolver(monkeypatch, settings) -> Resolver:
    settings.NOTIFY_TENANT_WEBHOOKS_PRIVATE = False  # as on a real site: tenants' webhooks are checked
    fake = Resolver(socket.getaddrinfo)
    fake.answers = {PUBLIC: [[GOOD]], PUBLIC_2: [[GOOD]]}  # the public addresses live here
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.fixture
def receivers():
    """An internal service on 127.0.0.1 and the tenant's real receiver on 127.0.0.2, on one port."""
    for _ in range(5):  # the port free on one address may be taken on the other
        port = free_port()
        try:
            evil, good = WebhookReceiver(EVIL, port).start(), WebhookReceiver(GOOD, port).start()
        except OSError:
            continue
        yield good, evil
        good.stop()
        evil.stop()
        return
    pytest.fail("no port free on both loopback addresses")


def _told(people) -> None:  # noqa: F811
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job of acme failed", tenant=people.acme)
    deliver_all()


def test_a_name_rebound_to_a_private_address_still_reaches_the_address_checked(people, resolver, receivers):  # noqa: F811
    good, evil = receivers
    resolver.answers[NAME] = [[PUBLIC], [EVIL]]  # public to the check, the panel's own machine after
    target, secret = webhook_target(people.alice, good.url("/hook", host=NAME))

    _told(people)

    delivery = target.deliveries.get()
    assert delivery.state == DeliveryState.SENT, delivery.last_error
    assert evil.received == [] and resolver.asked[NAME] == 1  # resolved once: by the check
    [request] = good.received
    assert request.signed_with(secret) and request.json["subject"] == "job of acme failed"
    assert request.headers["Host"] == f"{NAME}:{good.port}"  # the name, not the address connected to


@pytest.mark.parametrize("answer", [[EVIL], [PUBLIC, "10.1.2.3"], ["::1"], ["169.254.169.254"]])
def test_a_name_with_any_private_address_is_refused_before_connecting(people, resolver, receivers, answer):  # noqa: F811
    good, evil = receivers
    resolver.answers[NAME] = [answer]
    target, _ = webhook_target(people.alice, good.url("/hook", host=NAME))

    _told(people)

    delivery = target.deliveries.get()
    assert (delivery.state, delivery.attempts) == (DeliveryState.FAILED, 1)
    assert "not a public address" in delivery.last_error
    assert good.received == [] and evil.received == []


def test_an_address_that_refuses_the_connection_gives_way_to_the_next_checked_one(people, resolver, receivers):  # noqa: F811
    good, evil = receivers
    resolver.answers[PUBLIC] = [[NOBODY]]  # nothing listens there: refused before anything is sent
    resolver.answers[NAME] = [[PUBLIC, PUBLIC_2], [EVIL]]
    target, _ = webhook_target(people.alice, good.url("/hook", host=NAME))

    _told(people)

    assert target.deliveries.get().state == DeliveryState.SENT
    assert len(good.received) == 1 and evil.received == []


def test_a_redirect_is_not_followed(people, resolver, receivers):  # noqa: F811
    good, evil = receivers
    resolver.answers[NAME] = [[PUBLIC]]
    good.answers = [302]
    target, _ = webhook_target(people.alice, good.url("/hook", host=NAME))

    _told(people)

    delivery = target.deliveries.get()
    assert (delivery.state, delivery.response_code) == (DeliveryState.FAILED, 302)
    assert len(good.received) == 1 and evil.received == []


def test_an_operators_webhook_and_the_labs_setting_go_where_the_name_leads_as_before(people, resolver, receivers,  # noqa: F811
                                                                                  settings):
    good, _ = receivers
    resolver.answers[NAME] = [[GOOD]]  # a private address: no check for these two
    operators, _ = webhook_target(people.operator, good.url("/op", host=NAME), kinds=[EventKind.INCIDENT_OPENED])
    notify(EventKind.INCIDENT_OPENED, Severity.CRITICAL, "cpu1 failed")
    deliver_all()
    settings.NOTIFY_TENANT_WEBHOOKS_PRIVATE = True
    alices, _ = webhook_target(people.alice, good.url("/alice", host=NAME))
    _told(people)

    assert operators.deliveries.get().state == alices.deliveries.get().state == DeliveryState.SENT
    assert sorted(r.path for r in good.received) == ["/alice", "/op"]


# --- HTTPS: the certificate is checked against the URL's name, not the address connected to ----------

def _certificate(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any,
                 san: str | None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=san is None, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if san is None:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, *objects: Any) -> Path:
    path.write_bytes(b"".join(
        o.public_bytes(serialization.Encoding.PEM) if isinstance(o, x509.Certificate) else o.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        for o in objects))
    return path


def _tls(tmp_path: Path, certified_name: str) -> tuple[ssl.SSLContext, Path]:
    """A server context whose certificate names `certified_name`, and the file of the CA that signed it."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, None, ca_key, None)
    server = _certificate(certified_name, server_key, ca, ca_key, certified_name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(_pem(tmp_path / "server.pem", server, server_key))
    return context, _pem(tmp_path / "ca.pem", ca)


@pytest.mark.parametrize(("certified", "trusted", "outcome"), [
    (NAME, True, None),
    ("other.example.org", True, "hostname 'hooks.example.org' doesn't match"),  # the URL's name is checked
    (NAME, False, "certificate verify failed"),  # a CA nobody trusts
])
def test_https_to_the_checked_address_verifies_the_certificate_for_the_urls_name(
        people, resolver, tmp_path, monkeypatch, settings, certified, trusted, outcome):  # noqa: F811
    settings.NOTIFY_MAX_ATTEMPTS = 1  # the first attempt's error stays (a second would be refused: EVIL)
    context, ca = _tls(tmp_path, certified)
    if trusted:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    receiver = WebhookReceiver(GOOD, tls=context).start()
    try:
        resolver.answers[NAME] = [[PUBLIC], [EVIL]]
        target, secret = webhook_target(people.alice, receiver.url("/tls", host=NAME))
        _told(people)
    finally:
        receiver.stop()

    delivery = target.deliveries.get()
    if outcome is None:
        assert delivery.state == DeliveryState.SENT, delivery.last_error
        [request] = receiver.received
        assert request.signed_with(secret) and request.headers["Host"] == f"{NAME}:{receiver.port}"
    else:
        assert delivery.state == DeliveryState.FAILED
        assert outcome in delivery.last_error and receiver.received == []
