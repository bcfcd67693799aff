"""The one place that turns the settings into Kafka client options, and the
start-up check every Kafka client of Eventide runs first.

- :func:`aiokafka_options`: keyword arguments of ``AIOKafkaProducer``,
  ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient`` (bootstrap servers, security
  protocol, SASL, an :class:`ssl.SSLContext`);
- :func:`confluent_options`: the librdkafka configuration of confluent-kafka's
  ``Producer``, ``Consumer`` and ``AdminClient``;
- :func:`faust_credentials`: the Faust app's ``broker_credentials``.

aiokafka and librdkafka both retry a refused credential or an untrusted
certificate forever. :func:`check_kafka` connects once, authenticates and asks
for the metadata of the topics (and the coordinator of the groups) a process
needs, with a short deadline (EVENTIDE_KAFKA_CONNECT_TIMEOUT); a refusal
raises :class:`~streams.exceptions.KafkaSecurityError` with the broker's
answer and the settings to look at, so a process fails at start-up in seconds
instead of hanging. :func:`check_confluent` does the same through librdkafka,
for the engine's confluent-kafka clients. :func:`explain` turns a client
library's authorization error into the same kind of message.

Credentials never reach a log line: the options hold them, messages name the
user but never the password.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import faust
from aiokafka import errors as kerrors
from aiokafka.conn import create_conn
from aiokafka.protocol.coordination import FindCoordinatorRequest
from aiokafka.protocol.metadata import MetadataRequest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from .exceptions import BrokerError, KafkaAuthorizationError, KafkaSecurityError
from .kafka_security import (
    VAR_CA_FILE,
    VAR_CHECK_HOSTNAME,
    VAR_MECHANISM,
    VAR_PASSWORD,
    VAR_PASSWORD_FILE,
    VAR_PROTOCOL,
    VAR_USERNAME,
    KafkaSecurity,
)
from .settings import Settings

logger = logging.getLogger(__name__)


def _no_sasl_payloads(record: logging.LogRecord) -> bool:
    """aiokafka logs every request at DEBUG, SASL/PLAIN's password included: drop
    the lines about SASL exchanges."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not any(type(arg).__name__.startswith("SaslAuthenticate") for arg in args)


logging.getLogger("aiokafka.conn").addFilter(_no_sasl_payloads)


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` and the security keyword arguments of aiokafka's clients."""
    sec = settings.kafka_security
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": sec.protocol,
    }
    if sec.uses_tls:
        options["ssl_context"] = sec.ssl_context()
    if sec.uses_sasl:
        options["sasl_mechanism"] = sec.mechanism
        options["sasl_plain_username"] = sec.username
        options["sasl_plain_password"] = sec.sasl_password()
    return options


def confluent_options(settings: Settings) -> dict[str, Any]:
    """``bootstrap.servers`` and the security settings of librdkafka's clients."""
    sec = settings.kafka_security
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "security.protocol": sec.protocol.lower(),
    }
    if sec.uses_tls:
        # "probe": librdkafka looks for the system's CA bundle, as Python's ssl does.
        config["ssl.ca.location"] = sec.ca_file or "probe"
        config["enable.ssl.certificate.verification"] = True
        config["ssl.endpoint.identification.algorithm"] = "https" if sec.check_hostname else "none"
        if sec.cert_file:
            config["ssl.certificate.location"] = sec.cert_file
            config["ssl.key.location"] = sec.key_file
            if sec.key_password:
                config["ssl.key.password"] = sec.key_password.reveal()
    if sec.uses_sasl:
        config["sasl.mechanism"] = sec.mechanism
        config["sasl.username"] = sec.username
        config["sasl.password"] = sec.sasl_password()
    return config


def faust_credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """The Faust app's ``broker_credentials`` (None for PLAINTEXT)."""
    sec = settings.kafka_security
    context = sec.ssl_context() if sec.uses_tls else None
    if sec.uses_sasl:
        return faust.SASLCredentials(
            username=sec.username,
            password=sec.sasl_password(),
            ssl_context=context,
            mechanism=sec.mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


# -- the start-up check ----------------------------------------------------------


async def check_kafka(
    settings: Settings,
    *,
    topics: Sequence[str] = (),
    groups: Sequence[str] = (),
    purpose: str = "eventide",
) -> None:
    """Connect and authenticate to a bootstrap server, then check that the
    principal may see ``topics`` (missing ones are fine) and use ``groups``.

    Raises :class:`KafkaSecurityError` when TLS or SASL is refused,
    :class:`KafkaAuthorizationError` when an ACL denies a topic or group, and
    :class:`BrokerError` when no broker answers within
    EVENTIDE_KAFKA_CONNECT_TIMEOUT seconds.
    """
    timeout = settings.kafka_connect_timeout
    sec = settings.kafka_security
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    problems: list[str] = []
    for server in settings.bootstrap_servers:
        if loop.time() >= deadline:
            break
        conn = await _connect(settings, server, deadline, purpose, problems)
        if conn is None:
            continue
        try:
            await asyncio.wait_for(
                _check_access(conn, server, sec, topics, groups), deadline - loop.time()
            )
        except (TimeoutError, kerrors.KafkaConnectionError) as exc:
            problems.append(f"{server}: {_reason(exc)}")
            continue
        finally:
            conn.close()
        logger.debug("%s: %s accepted %s", purpose, server, sec.describe())
        return
    raise BrokerError(
        f"cannot reach Kafka at {settings.broker_url} (EVENTIDE_BROKER_URL) within "
        f"{timeout:g}s (EVENTIDE_KAFKA_CONNECT_TIMEOUT): {'; '.join(problems) or 'no answer'}; "
        f"is the broker running (`eventide broker start` starts the dev broker), and does "
        f"{VAR_PROTOCOL}={sec.protocol} match its listener?"
    )


async def _connect(
    settings: Settings, server: str, deadline: float, purpose: str, problems: list[str]
) -> Any:
    """An authenticated aiokafka connection to ``server``, or None (the reason
    appended to ``problems``) when it does not answer; raises on a refusal."""
    sec = settings.kafka_security
    options = aiokafka_options(settings)
    del options["bootstrap_servers"]
    host, _, port = server.rpartition(":")
    left = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                client_id=f"{purpose}-check",
                request_timeout_ms=max(1, int(left * 1000)),
                **options,
            ),
            left,
        )
    except (TimeoutError, OSError, kerrors.KafkaConnectionError) as exc:
        refused = _tls_refusal(exc, server, sec)
        if refused is not None:
            raise KafkaSecurityError(refused) from None
        problems.append(f"{server}: {_reason(exc)}")
        return None
    except kerrors.KafkaError as exc:
        raise KafkaSecurityError(_sasl_refusal(exc, server, sec)) from None


async def _check_access(
    conn: Any, server: str, sec: KafkaSecurity, topics: Sequence[str], groups: Sequence[str]
) -> None:
    if topics:
        response = await conn.send(MetadataRequest(list(topics), allow_auto_topic_creation=False))
        denied = [
            t[1] for t in response.topics if t[0] == kerrors.TopicAuthorizationFailedError.errno
        ]
        if denied:
            raise KafkaAuthorizationError(
                f"Kafka at {server} refused {_principal(sec)} access to topic(s) "
                f"{', '.join(sorted(denied))}: TOPIC_AUTHORIZATION_FAILED; the broker's ACLs "
                f"must allow this principal (check {VAR_USERNAME} and EVENTIDE_TOPIC_PREFIX)"
            )
    for group in groups:
        response = await conn.send(FindCoordinatorRequest(group, 0))
        if response.error_code == kerrors.GroupAuthorizationFailedError.errno:
            raise KafkaAuthorizationError(
                f"Kafka at {server} refused {_principal(sec)} the consumer group {group!r}: "
                f"GROUP_AUTHORIZATION_FAILED; the broker's ACLs must allow this principal "
                f"to read the group (check {VAR_USERNAME} and EVENTIDE_APP_ID)"
            )


def _principal(sec: KafkaSecurity) -> str:
    if sec.uses_sasl:
        return f"User:{sec.username} ({VAR_USERNAME})"
    return f"this client ({VAR_PROTOCOL}={sec.protocol})"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer"
    return str(exc) or type(exc).__name__


def _tls_refusal(exc: BaseException, server: str, sec: KafkaSecurity) -> str | None:
    """The message for a TLS failure, or None when ``exc`` is not one."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        message = cause.verify_message or str(cause)
        if "hostname" in message.lower() or "ip address mismatch" in message.lower():
            return (
                f"TLS: the certificate of the broker at {server} does not name that host "
                f"({message}); connect by a name in its certificate, or set "
                f"{VAR_CHECK_HOSTNAME}=false for a test broker"
            )
        return (
            f"TLS: the certificate of the broker at {server} is not trusted ({message}); "
            f"{VAR_CA_FILE}={sec.ca_file or '(empty: the system CAs)'} must hold the CA "
            "that signed it"
        )
    return (
        f"TLS handshake with the broker at {server} failed ({cause.reason or cause}); "
        f"does {VAR_PROTOCOL}={sec.protocol} match the broker's listener?"
    )


def _sasl_refusal(exc: kerrors.KafkaError, server: str, sec: KafkaSecurity) -> str:
    answer = str(exc) or type(exc).__name__
    if isinstance(exc, kerrors.UnsupportedSaslMechanismError):
        return (
            f"SASL: the broker at {server} does not offer {VAR_MECHANISM}={sec.mechanism} "
            f"({answer})"
        )
    if isinstance(exc, kerrors.SaslAuthenticationFailed | kerrors.AuthenticationFailedError):
        source = VAR_PASSWORD_FILE if sec.password_file else VAR_PASSWORD
        return (
            f"SASL: the broker at {server} refused the credentials of "
            f"{VAR_USERNAME}={sec.username!r} ({source}, {VAR_MECHANISM}={sec.mechanism}): "
            f"{answer}"
        )
    return (
        f"Kafka at {server} refused the connection ({type(exc).__name__}: {answer}); "
        f"check {sec.describe()}"
    )


def explain(exc: BaseException, settings: Settings) -> str | None:
    """A clear message for a Kafka client library's authorization or authentication
    error raised after start-up, or None when ``exc`` is not one of those."""
    sec = settings.kafka_security
    if isinstance(exc, kerrors.TopicAuthorizationFailedError):
        return (
            f"Kafka refused {_principal(sec)} access to topic(s) {exc.args[0] if exc.args else ''}"
            ": TOPIC_AUTHORIZATION_FAILED; the broker's ACLs must allow this principal "
            f"(check {VAR_USERNAME} and EVENTIDE_TOPIC_PREFIX)"
        )
    if isinstance(exc, kerrors.GroupAuthorizationFailedError):
        return (
            f"Kafka refused {_principal(sec)} its consumer group: GROUP_AUTHORIZATION_FAILED "
            f"(check {VAR_USERNAME} and EVENTIDE_APP_ID)"
        )
    if isinstance(exc, kerrors.ClusterAuthorizationFailedError):
        return (
            f"Kafka refused {_principal(sec)} a cluster operation: CLUSTER_AUTHORIZATION_FAILED"
            f" (check {VAR_USERNAME})"
        )
    return None


# -- librdkafka ----------------------------------------------------------------------

FATAL_RD_CODES = ("_AUTHENTICATION", "_SSL", "TOPIC_AUTHORIZATION_FAILED",
                  "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED")  # fmt: skip
"""librdkafka error names that no retry can fix."""


async def check_confluent(settings: Settings, purpose: str = "eventide") -> None:
    """:func:`check_kafka` through librdkafka: connect, authenticate and list
    topics within EVENTIDE_KAFKA_CONNECT_TIMEOUT, or raise
    :class:`KafkaSecurityError` (refused) / :class:`BrokerError` (no answer)."""
    sec = settings.kafka_security
    errors: list[Any] = []
    config = {
        **confluent_options(settings),
        "client.id": f"{purpose}-check",
        "error_cb": errors.append,
        "logger": logging.getLogger("streams.rdkafka.check"),
    }
    admin = AdminClient(config)
    timeout = settings.kafka_connect_timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        admin.poll(0)  # serves error_cb
        fatal = [e for e in errors if e.name() in FATAL_RD_CODES]
        if fatal:
            raise KafkaSecurityError(
                f"Kafka refused librdkafka's connection ({fatal[0].name()}: {fatal[0].str()}); "
                f"check {sec.describe()}"
            )
        try:
            await loop.run_in_executor(None, lambda: admin.list_topics(timeout=0.5))
            return
        except KafkaException as exc:
            if loop.time() >= deadline:
                detail = "; ".join(e.str() for e in errors[-3:]) or str(exc)
                raise BrokerError(
                    f"librdkafka could not reach Kafka at {settings.broker_url} "
                    f"(EVENTIDE_BROKER_URL) within {timeout:g}s "
                    f"(EVENTIDE_KAFKA_CONNECT_TIMEOUT): {detail}; check {sec.describe()}"
                ) from None
