"""How Eventide authenticates to Kafka: TLS and SASL settings as one value object.

:class:`KafkaSecurity` holds the EVENTIDE_KAFKA_* security settings (protocol,
SASL mechanism and credentials, CA, client certificate) and checks them at
start-up: a missing file, a CA that does not load or SASL without a user fails
with a :class:`~streams.exceptions.SettingsError` naming the variable. It
builds the one :class:`ssl.SSLContext` the clients use. The options of each
client library (aiokafka, librdkafka, Faust) are derived from it in
:mod:`streams.kafka_clients`.

Only the standard library is used here: the settings import this module, and
importing the settings must not load a Kafka client.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .exceptions import SettingsError
from .setting_types import _choice
from .tokens import Secret

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
"""EVENTIDE_KAFKA_SECURITY_PROTOCOL values (Kafka's ``security.protocol``)."""
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""EVENTIDE_KAFKA_SASL_MECHANISM values (Kafka's ``sasl.mechanism``)."""

VAR_PROTOCOL = "EVENTIDE_KAFKA_SECURITY_PROTOCOL"
VAR_MECHANISM = "EVENTIDE_KAFKA_SASL_MECHANISM"
VAR_USERNAME = "EVENTIDE_KAFKA_USERNAME"
VAR_PASSWORD = "EVENTIDE_KAFKA_PASSWORD"
VAR_PASSWORD_FILE = "EVENTIDE_KAFKA_PASSWORD_FILE"
VAR_CA_FILE = "EVENTIDE_KAFKA_CA_FILE"
VAR_CERT_FILE = "EVENTIDE_KAFKA_CERT_FILE"
VAR_KEY_FILE = "EVENTIDE_KAFKA_KEY_FILE"
VAR_KEY_PASSWORD = "EVENTIDE_KAFKA_KEY_PASSWORD"
VAR_CHECK_HOSTNAME = "EVENTIDE_KAFKA_CHECK_HOSTNAME"
MASK = "***"
SECURITY_FIELDS = {
    "protocol": "kafka_security_protocol",
    "mechanism": "kafka_sasl_mechanism",
    "username": "kafka_username",
    "password": "kafka_password",
    "password_file": "kafka_password_file",
    "ca_file": "kafka_ca_file",
    "cert_file": "kafka_cert_file",
    "key_file": "kafka_key_file",
    "key_password": "kafka_key_password",
    "check_hostname": "kafka_check_hostname",
}
""":class:`KafkaSecurity` field → the :class:`~streams.settings.Settings` field it comes from."""


def parse_upper_choice(*choices: str) -> Callable[[str, str], str]:
    """A settings parser accepting one of ``choices``, in any case."""
    return _choice(*choices, fold=str.upper)


def parse_secret(var: str, value: str) -> Secret:
    """A settings parser of a secret: kept as given, printed masked."""
    return Secret(value)


@dataclass(frozen=True)
class KafkaSecurity:
    """The TLS and SASL settings every Kafka client of Eventide uses."""

    protocol: str = "PLAINTEXT"
    """Kafka's ``security.protocol``: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    mechanism: str = "SCRAM-SHA-512"
    """The SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."""
    username: str = ""
    """The SASL user (the principal the broker's ACLs name, ``User:<username>``)."""
    password: Secret = field(default_factory=lambda: Secret(""))
    """The SASL password, unless :attr:`password_file` holds it."""
    password_file: str = ""
    """A file whose content (one line) is the SASL password; read at each connect."""
    ca_file: str = ""
    """PEM file of the CAs that sign the brokers' certificates; empty: the system's."""
    cert_file: str = ""
    """PEM file of the client certificate (mutual TLS), with :attr:`key_file`."""
    key_file: str = ""
    """PEM file of the client certificate's private key."""
    key_password: Secret = field(default_factory=lambda: Secret(""))
    """Password of an encrypted :attr:`key_file`."""
    check_hostname: bool = True
    """Whether the broker's certificate must name the host connected to."""

    @property
    def uses_tls(self) -> bool:
        """SSL or SASL_SSL."""
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        """SASL_PLAINTEXT or SASL_SSL."""
        return self.protocol.startswith("SASL_")

    @property
    def secured(self) -> bool:
        """Anything but PLAINTEXT."""
        return self.protocol != "PLAINTEXT"

    def sasl_password(self) -> str:
        """The SASL password, from :attr:`password` or read from :attr:`password_file`."""
        if self.password_file:
            try:
                text = Path(self.password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(
                    f"{VAR_PASSWORD_FILE}={self.password_file!r}: cannot read it "
                    f"({exc.strerror or exc})"
                ) from None
            return text.rstrip("\r\n")
        return self.password.reveal()

    def validate(self) -> None:
        """Check the combination and the files; raise :class:`SettingsError` naming
        the variable. Building the TLS context proves the CA and the key load."""
        if self.protocol not in PROTOCOLS:
            raise SettingsError(
                f"{VAR_PROTOCOL}={self.protocol!r}: expected one of {', '.join(PROTOCOLS)}"
            )
        if self.mechanism not in MECHANISMS:
            raise SettingsError(
                f"{VAR_MECHANISM}={self.mechanism!r}: expected one of {', '.join(MECHANISMS)}"
            )
        if self.uses_sasl:
            self._validate_sasl()
        else:
            for var, value in (
                (VAR_USERNAME, self.username),
                (VAR_PASSWORD, self.password.value),
                (VAR_PASSWORD_FILE, self.password_file),
            ):
                if value:
                    raise SettingsError(
                        f"{var} is set but {VAR_PROTOCOL}={self.protocol} does not use SASL; "
                        "set SASL_SSL (or SASL_PLAINTEXT) or unset it"
                    )
        if self.uses_tls:
            self.ssl_context()
        else:
            for var, value in (
                (VAR_CA_FILE, self.ca_file),
                (VAR_CERT_FILE, self.cert_file),
                (VAR_KEY_FILE, self.key_file),
            ):
                if value:
                    raise SettingsError(
                        f"{var}={value!r} is set but {VAR_PROTOCOL}={self.protocol} does not "
                        "use TLS; set SSL or SASL_SSL, or unset it"
                    )

    def _validate_sasl(self) -> None:
        if not self.username:
            raise SettingsError(
                f"{VAR_PROTOCOL}={self.protocol} needs {VAR_USERNAME} (the SASL user) and "
                f"{VAR_PASSWORD} or {VAR_PASSWORD_FILE}"
            )
        if self.password and self.password_file:
            raise SettingsError(f"set {VAR_PASSWORD} or {VAR_PASSWORD_FILE}, not both")
        if not self.password and not self.password_file:
            raise SettingsError(
                f"{VAR_PROTOCOL}={self.protocol} needs {VAR_PASSWORD} or {VAR_PASSWORD_FILE} "
                f"for {VAR_USERNAME}={self.username!r}"
            )
        if self.password_file:
            _readable(VAR_PASSWORD_FILE, self.password_file)
            if not self.sasl_password():
                raise SettingsError(f"{VAR_PASSWORD_FILE}={self.password_file!r} is empty")

    def ssl_context(self) -> ssl.SSLContext:
        """The client TLS context: the CA file (or the system's CAs), the client
        certificate when given, hostname verification unless turned off."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca_file:
            _readable(VAR_CA_FILE, self.ca_file)
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (ssl.SSLError, ValueError) as exc:
                raise SettingsError(
                    f"{VAR_CA_FILE}={self.ca_file!r}: not a PEM file of CA certificates ({exc})"
                ) from None
        if bool(self.cert_file) != bool(self.key_file):
            raise SettingsError(
                f"mutual TLS needs both {VAR_CERT_FILE} and {VAR_KEY_FILE}; "
                f"only {VAR_CERT_FILE if self.cert_file else VAR_KEY_FILE} is set"
            )
        if self.cert_file:
            _readable(VAR_CERT_FILE, self.cert_file)
            _readable(VAR_KEY_FILE, self.key_file)
            try:
                context.load_cert_chain(
                    self.cert_file, self.key_file, password=self.key_password.reveal() or None
                )
            except (ssl.SSLError, ValueError) as exc:
                raise SettingsError(
                    f"{VAR_CERT_FILE}={self.cert_file!r} / {VAR_KEY_FILE}={self.key_file!r}: "
                    f"the certificate and key do not load ({exc}); a key encrypted with a "
                    f"password needs {VAR_KEY_PASSWORD}"
                ) from None
        context.check_hostname = self.check_hostname
        return context

    def describe(self) -> str:
        """The settings a connection failure message names (no secret)."""
        parts = [f"{VAR_PROTOCOL}={self.protocol}"]
        if self.uses_sasl:
            parts += [f"{VAR_MECHANISM}={self.mechanism}", f"{VAR_USERNAME}={self.username}"]
        if self.uses_tls:
            parts.append(f"{VAR_CA_FILE}={self.ca_file or '(the system CAs)'}")
        return ", ".join(parts)


def _readable(var: str, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"{var}={path!r}: no such file")
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise SettingsError(f"{var}={path!r}: cannot read it ({exc.strerror or exc})") from None
