"""Secrets of the secured development broker: a CA, the broker's certificate,
one SCRAM user per role and the ACLs that confine each role.

``eventide broker certs`` (:func:`make_secrets`) writes into a private folder
(``<state_dir>/kafka-secrets``, mode 0700, files 0600):

- ``ca.pem`` / ``ca.key``: a CA made here (the clients' EVENTIDE_KAFKA_CA_FILE);
- ``broker.p12``: the broker's key and certificate (SAN 127.0.0.1 and
  localhost), signed by the CA, in a PKCS#12 keystore;
- ``client.pem`` / ``client.key``: a client certificate signed by the CA,
  for trying mutual TLS (EVENTIDE_KAFKA_CERT_FILE / _KEY_FILE);
- ``<role>.password`` for each role (admin, worker, relay): random, made once,
  kept; a client reads it with EVENTIDE_KAFKA_PASSWORD_FILE.

``eventide broker start --secure`` formats the broker's storage with these
SCRAM-SHA-512 users (``kafka-storage format --add-scram``), runs a SASL_SSL
listener with the KRaft StandardAuthorizer (deny by default, ``admin`` the super
user) and creates the ACLs of :func:`role_acls` once the broker answers.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streams.catalogue import PII_KEYS
from streams.exceptions import BrokerError
from streams.kafka_clients import confluent_options
from streams.settings import Settings
from streams.tokens import Secret

ROLES = ("admin", "worker", "relay")
"""One SCRAM user per role; ``admin`` is the broker's own user and the super user."""
MECHANISM = "SCRAM-SHA-512"
VALID_DAYS = 825


@dataclass(frozen=True)
class SecretsDir:
    """The private folder of the secured dev broker's CA, certificates and passwords."""

    home: Path
    """``<state_dir>/kafka-secrets``."""

    @property
    def ca(self) -> Path:
        return self.home / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.home / "ca.key"

    @property
    def keystore(self) -> Path:
        return self.home / "broker.p12"

    @property
    def client_cert(self) -> Path:
        return self.home / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.home / "client.key"

    def password_file(self, role: str) -> Path:
        """The file holding ``role``'s SCRAM password."""
        return self.home / f"{role}.password"

    def password(self, role: str) -> str:
        return self.password_file(role).read_text().strip()

    @property
    def keystore_password(self) -> str:
        return self.password("keystore")

    @property
    def fingerprint(self) -> str:
        """A digest of the roles' passwords: which users a broker's storage was formatted with."""
        joined = "\n".join(self.password(role) for role in ROLES)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    @property
    def complete(self) -> bool:
        files = [self.ca, self.ca_key, self.keystore, self.client_cert, self.client_key]
        files += [self.password_file(r) for r in (*ROLES, "keystore")]
        return all(f.exists() for f in files)


def secrets_for(settings: Settings) -> SecretsDir:
    return SecretsDir(settings.state_dir.resolve() / "kafka-secrets")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


Issued = tuple[x509.Certificate, rsa.RSAPrivateKey]
"""A certificate and its private key."""


def make_ca(common_name: str = "Eventide development CA") -> Issued:
    """A self-signed CA certificate and its key."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,  # digital signature, certificate and CRL signing
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: x509.Certificate, ca_key: rsa.RSAPrivateKey, common_name: str, server: bool
) -> Issued:
    """A certificate signed by the CA: a server one names 127.0.0.1 and localhost."""
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_secrets(settings: Settings, echo: Callable[[str], None] = print) -> SecretsDir:
    """Make the CA, the broker and client certificates and the role passwords,
    unless the folder already holds them all (passwords are never remade)."""
    where = secrets_for(settings)
    where.home.mkdir(parents=True, exist_ok=True)
    where.home.chmod(0o700)
    for role in (*ROLES, "keystore"):
        if not where.password_file(role).exists():
            _write_private(where.password_file(role), secrets.token_urlsafe(24).encode() + b"\n")
    if where.complete:
        return where
    ca, ca_key = make_ca()
    broker, broker_key = issue(ca, ca_key, "eventide-dev-broker", server=True)
    client, client_key = issue(ca, ca_key, "eventide-dev-client", server=False)
    _write_private(where.ca_key, _pem_key(ca_key))
    _write_private(where.ca, ca.public_bytes(serialization.Encoding.PEM))
    keystore = pkcs12.serialize_key_and_certificates(
        b"broker",
        broker_key,
        broker,
        [ca],
        serialization.BestAvailableEncryption(where.keystore_password.encode()),
    )
    _write_private(where.keystore, keystore)
    _write_private(where.client_key, _pem_key(client_key))
    _write_private(where.client_cert, client.public_bytes(serialization.Encoding.PEM))
    echo(
        f"made a CA, the broker's certificate (127.0.0.1, localhost) and passwords in {where.home}"
    )
    return where


def client_env(settings: Settings, where: SecretsDir, role: str) -> dict[str, str]:
    """The EVENTIDE_KAFKA_* variables of a client that connects as ``role``."""
    return {
        "EVENTIDE_BROKER_URL": settings.broker_url,
        "EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "EVENTIDE_KAFKA_SASL_MECHANISM": MECHANISM,
        "EVENTIDE_KAFKA_USERNAME": role,
        "EVENTIDE_KAFKA_PASSWORD_FILE": str(where.password_file(role)),
        "EVENTIDE_KAFKA_CA_FILE": str(where.ca),
    }


def as_role(settings: Settings, where: SecretsDir, role: str) -> Settings:
    """``settings`` connecting to the secured dev broker as ``role``."""
    return replace(
        settings,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=MECHANISM,
        kafka_username=role,
        kafka_password=Secret(""),
        kafka_password_file=str(where.password_file(role)),
        kafka_ca_file=str(where.ca),
        kafka_cert_file="",
        kafka_key_file="",
    )


def scram_arguments(where: SecretsDir) -> list[str]:
    """``kafka-storage format`` arguments that create every role's SCRAM user."""
    args: list[str] = []
    for role in ROLES:
        args += ["--add-scram", f"{MECHANISM}=[name={role},password={where.password(role)}]"]
    return args


def secure_properties(settings: Settings, where: SecretsDir) -> list[str]:
    """server.properties lines of the SASL_SSL listener, the PLAIN-authenticated
    controller listener and the deny-by-default StandardAuthorizer."""
    port, controller = settings.broker_port, settings.broker_port + 1
    admin = where.password("admin")
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    return [
        f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=SASL_SSL",
        "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
        f"sasl.enabled.mechanisms={MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        f'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram} required username="admin" password="{admin}";',  # noqa: E501
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f'listener.name.controller.plain.sasl.jaas.config={plain} required username="admin" password="{admin}" user_admin="{admin}";',  # noqa: E501
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={where.keystore}",
        f"ssl.keystore.password={where.keystore_password}",
        f"ssl.key.password={where.keystore_password}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={where.ca}",
        "ssl.client.auth=requested",
        "ssl.endpoint.identification.algorithm=https",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        "super.users=User:admin",
    ]


def role_acls(settings: Settings) -> list[AclBinding]:
    """Each role's ACLs: topics under EVENTIDE_TOPIC_PREFIX (all topics when it is
    empty), consumer groups starting with EVENTIDE_APP_ID.

    - worker: read, write, create and describe the topics; read its groups;
    - relay: write, create and describe the topics, read the data-keys topic
      (the command API encrypts personal fields); no group.
    """
    prefix = settings.topic_prefix
    topic_name, topic_type = (
        (prefix, ResourcePatternType.PREFIXED) if prefix else ("*", ResourcePatternType.LITERAL)
    )
    allow = AclPermissionType.ALLOW
    ops = {
        "worker": [AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE,
                   AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS],
        "relay": [AclOperation.WRITE, AclOperation.CREATE, AclOperation.DESCRIBE,
                  AclOperation.DESCRIBE_CONFIGS],
    }  # fmt: skip
    bindings = [
        AclBinding(ResourceType.TOPIC, topic_name, topic_type, f"User:{role}", "*", op, allow)
        for role, role_ops in ops.items()
        for op in role_ops
    ]
    bindings += [
        AclBinding(
            ResourceType.GROUP, settings.app_id, ResourcePatternType.PREFIXED,
            "User:worker", "*", op, allow,
        )
        for op in (AclOperation.READ, AclOperation.DESCRIBE)
    ]  # fmt: skip
    bindings.append(keys_acl(settings))
    return bindings


def keys_acl(settings: Settings) -> AclBinding:
    """The command API (the relay's principal) reads the customers' data keys to
    encrypt personal fields (streams/keys.py): that one topic, no other."""
    return AclBinding(
        ResourceType.TOPIC, settings.topic(PII_KEYS.name), ResourcePatternType.LITERAL,
        "User:relay", "*", AclOperation.READ, AclPermissionType.ALLOW,
    )  # fmt: skip


def create_acls(
    settings: Settings,
    where: SecretsDir,
    timeout: float = 30.0,
    bindings: list[AclBinding] | None = None,
) -> int:
    """Create the roles' ACLs (or ``bindings``) as the admin (idempotent); returns how many."""
    admin = AdminClient(confluent_options(as_role(settings, where, "admin")))
    bindings = role_acls(settings) if bindings is None else bindings
    futures = admin.create_acls(bindings, request_timeout=timeout)
    for binding, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            raise BrokerError(f"could not create the ACL {binding}: {exc}") from exc
    return len(bindings)


def exports(settings: Settings, where: SecretsDir) -> str:
    """What to export to connect as each role (the CLI as admin)."""
    lines = ["# The CLI (topics, demo, history, dlq) as the admin:"]
    lines += [f"export {k}={v}" for k, v in client_env(settings, where, "admin").items()]
    for role in ("worker", "relay"):
        lines.append(
            f"# `eventide {role}`: the same with EVENTIDE_KAFKA_USERNAME={role} "
            f"EVENTIDE_KAFKA_PASSWORD_FILE={where.password_file(role)}"
        )
    return "\n".join(lines)
