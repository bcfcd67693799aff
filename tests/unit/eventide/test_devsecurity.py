"""The secured dev broker's secrets, configuration and ACLs (no broker needed)."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from eventide.tools import devbroker, devsecurity
from streams.exceptions import BrokerError
from streams.settings import Settings


def settings_in(tmp_path, **env: str) -> Settings:
    return Settings.from_env(
        {"EVENTIDE_STATE_DIR": str(tmp_path), "EVENTIDE_BROKER_URL": "kafka://127.0.0.1:29150",
         **env}
    )  # fmt: skip


def test_certs_are_made_once_in_a_private_folder(tmp_path):
    settings = settings_in(tmp_path)
    where = devsecurity.make_secrets(settings, echo=lambda _: None)
    assert stat.S_IMODE(where.home.stat().st_mode) == 0o700
    for role in devsecurity.ROLES:
        assert stat.S_IMODE(where.password_file(role).stat().st_mode) == 0o600
        assert len(where.password(role)) >= 24
    assert stat.S_IMODE(where.ca_key.stat().st_mode) == 0o600
    first = {role: where.password(role) for role in devsecurity.ROLES}
    ca = where.ca.read_bytes()
    again = devsecurity.make_secrets(settings, echo=lambda _: None)
    assert {role: again.password(role) for role in devsecurity.ROLES} == first
    assert again.ca.read_bytes() == ca

    key, cert, chain = pkcs12.load_key_and_certificates(
        where.keystore.read_bytes(), where.keystore_password.encode()
    )
    assert key is not None and cert is not None
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    ca_cert = x509.load_pem_x509_certificate(ca)
    cert.verify_directly_issued_by(ca_cert)
    assert chain == [ca_cert]


def test_the_secure_broker_has_a_sasl_ssl_listener_and_denies_by_default(tmp_path):
    settings = settings_in(tmp_path)
    where = devsecurity.make_secrets(settings, echo=lambda _: None)
    paths = devbroker.paths_for(settings)
    props = dict(
        line.split("=", 1)
        for line in devbroker.server_properties(settings, paths, where).splitlines()
        if line and not line.startswith("#")
    )
    assert props["listeners"] == "SASL_SSL://127.0.0.1:29150,CONTROLLER://127.0.0.1:29151"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    assert props["ssl.truststore.location"] == str(where.ca)
    scram = devsecurity.scram_arguments(where)
    assert scram.count("--add-scram") == 3
    assert f"SCRAM-SHA-512=[name=relay,password={where.password('relay')}]" in scram
    # The plaintext broker's configuration is unchanged.
    plain = devbroker.server_properties(settings, paths)
    assert "listeners=PLAINTEXT://127.0.0.1:29150,CONTROLLER://127.0.0.1:29151" in plain
    assert "SASL" not in plain and "authorizer" not in plain


def test_each_role_gets_only_its_topics_and_groups(tmp_path):
    acls = devsecurity.role_acls(settings_in(tmp_path, EVENTIDE_TOPIC_PREFIX="shop-",
                                             EVENTIDE_APP_ID="shop"))  # fmt: skip
    granted = {(a.principal, a.restype, a.name, a.resource_pattern_type, a.operation) for a in acls}
    topic = (ResourceType.TOPIC, "shop-", ResourcePatternType.PREFIXED)
    group = (ResourceType.GROUP, "shop", ResourcePatternType.PREFIXED)
    assert ("User:worker", *topic, AclOperation.READ) in granted
    assert ("User:worker", *group, AclOperation.READ) in granted
    assert ("User:relay", *topic, AclOperation.WRITE) in granted
    relay_reads = {
        (r, n, t) for p, r, n, t, op in granted if p == "User:relay" and op == AclOperation.READ
    }
    assert relay_reads == {(ResourceType.TOPIC, "shop-pii-keys", ResourcePatternType.LITERAL)}
    assert not any(p == "User:relay" and r == ResourceType.GROUP for p, r, *_ in granted)
    assert not any(p == "User:admin" for p, *_ in granted)  # the super user needs none
    everything = devsecurity.role_acls(settings_in(tmp_path))
    assert {
        (a.name, a.resource_pattern_type) for a in everything if a.restype == ResourceType.TOPIC
    } == {("*", ResourcePatternType.LITERAL), ("pii-keys", ResourcePatternType.LITERAL)}


def test_storage_of_one_kind_or_other_passwords_is_never_reused(tmp_path):
    settings = settings_in(tmp_path)
    paths = devbroker.paths_for(settings)
    paths.data.mkdir(parents=True)  # formatted for a plaintext broker
    with pytest.raises(BrokerError, match="belongs to a plaintext broker"):
        devbroker.start(settings, echo=lambda _: None, secure=True)
    paths.secure_mark.write_text("0123456789abcdef\n")  # ... for other passwords
    with pytest.raises(BrokerError, match="SCRAM users of other passwords"):
        devbroker.start(settings, echo=lambda _: None, secure=True)
    with pytest.raises(BrokerError, match=r"belongs to a secured \(--secure\) broker"):
        devbroker.start(settings, echo=lambda _: None)
