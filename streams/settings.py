"""Settings: one frozen object, read from the environment in exactly one place.

Every variable is prefixed ``EVENTIDE_``.  :meth:`Settings.from_env` is the only
code that reads the environment; everything else receives a ``Settings``.  A
value that cannot be used fails at start-up with a :class:`SettingsError` that
names the variable, the value found and what is expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from schemas.limits import Limits

from .exceptions import SettingsError
from .kafka_security import (
    MECHANISMS,
    PROTOCOLS,
    SECURITY_FIELDS,
    KafkaSecurity,
)
from .kafka_security import parse_secret as _password
from .kafka_security import parse_upper_choice as _upper_choice
from .setting_types import (
    ALL_PROJECTIONS,
    PARSE,
    PREFIX,
    SecretUrl,
    _amqp_url,
    _binding_keys,
    _bool,
    _choice,
    _database_url,
    _float,
    _heap,
    _http_url,
    _int,
    _log_level,
    _path,
    _prefix,
    _projections,
    _rate,
    _secret,
    _str,
    _token_entries,
    parse_broker_url,
    setting,
)
from .tokens import Secret


@dataclass(frozen=True)
class Settings:
    """Runtime configuration of a worker, the demo and the dev broker."""

    broker_url: str = setting("kafka://127.0.0.1:9092", _str)
    """EVENTIDE_BROKER_URL: Kafka bootstrap servers, ``kafka://host:port[;host:port]``."""

    kafka_security_protocol: str = setting("PLAINTEXT", _upper_choice(*PROTOCOLS))
    """EVENTIDE_KAFKA_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""

    kafka_sasl_mechanism: str = setting("SCRAM-SHA-512", _upper_choice(*MECHANISMS))
    """EVENTIDE_KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)."""

    kafka_username: str = setting("", _prefix)
    """EVENTIDE_KAFKA_USERNAME: the SASL user (SASL_PLAINTEXT and SASL_SSL need one)."""

    kafka_password: Secret = setting(parse=_password, factory=lambda: Secret(""))
    """EVENTIDE_KAFKA_PASSWORD: the SASL password; never printed or logged."""

    kafka_password_file: str = setting("", _prefix)
    """EVENTIDE_KAFKA_PASSWORD_FILE: a file holding the SASL password instead."""

    kafka_ca_file: str = setting("", _prefix)
    """EVENTIDE_KAFKA_CA_FILE: PEM CAs of the brokers' certificates (empty: the system's)."""

    kafka_cert_file: str = setting("", _prefix)
    """EVENTIDE_KAFKA_CERT_FILE: PEM client certificate for mutual TLS (with the key)."""

    kafka_key_file: str = setting("", _prefix)
    """EVENTIDE_KAFKA_KEY_FILE: PEM private key of the client certificate."""

    kafka_key_password: Secret = setting(parse=_password, factory=lambda: Secret(""))
    """EVENTIDE_KAFKA_KEY_PASSWORD: password of an encrypted client key; never printed."""

    kafka_check_hostname: bool = setting(True, _bool)
    """EVENTIDE_KAFKA_CHECK_HOSTNAME: the broker's certificate must name its host."""

    kafka_connect_timeout: float = setting(10.0, _float(1, 300))
    """EVENTIDE_KAFKA_CONNECT_TIMEOUT: seconds the start-up check waits for a broker."""

    app_id: str = setting("eventide", _str)
    """EVENTIDE_APP_ID: consumer group id and prefix of changelog topics."""

    topic_prefix: str = setting("", _prefix)
    """EVENTIDE_TOPIC_PREFIX: prepended to every topic name (tests use a uuid)."""

    partitions: int = setting(8, _int(1, 1024))
    """EVENTIDE_PARTITIONS: partitions of every topic Eventide creates."""

    replication_factor: int = setting(1, _int(1, 16))
    """EVENTIDE_REPLICATION_FACTOR: replicas of every topic Eventide creates; not
    below the brokers' ``min.insync.replicas`` (streams/topics.py checks)."""

    data_dir: Path = setting(Path(".eventide/data"), _path)
    """EVENTIDE_DATA_DIR: where the worker keeps its RocksDB tables."""

    state_dir: Path = setting(Path(".eventide"), _path)
    """EVENTIDE_STATE_DIR: pid files, logs and the dev broker's storage."""

    web_host: str = setting("127.0.0.1", _str)
    """EVENTIDE_WEB_HOST: address the worker's HTTP server binds and advertises."""

    web_port: int = setting(6066, _int(1, 65535))
    """EVENTIDE_WEB_PORT: port of the worker's HTTP server (queries, health)."""

    log_level: str = setting("info", _log_level)
    """EVENTIDE_LOG_LEVEL: debug, info, warning, error or critical."""

    broker_heap: str = setting("1g", _heap)
    """EVENTIDE_BROKER_HEAP: maximum Java heap of the development broker (-Xmx)."""

    broker_start_timeout: float = setting(60.0, _float(1, 600))
    """EVENTIDE_BROKER_START_TIMEOUT: seconds to wait for the dev broker to answer."""

    max_record_bytes: int = setting(1_048_576, _int(64, 64 * 1_048_576))
    """EVENTIDE_MAX_RECORD_BYTES: larger record values are rejected before decoding."""

    max_json_depth: int = setting(32, _int(4, 1000))  # an order.placed nests 4 deep
    """EVENTIDE_MAX_JSON_DEPTH: deepest JSON nesting accepted, checked before parsing."""

    max_string_length: int = setting(65_536, _int(1, 64 * 1_048_576))
    """EVENTIDE_MAX_STRING_LENGTH: longest string (characters) of an event field."""

    max_array_length: int = setting(10_000, _int(1, 10_000_000))
    """EVENTIDE_MAX_ARRAY_LENGTH: most elements in an array of an event's data."""

    batch_max_records: int = setting(10_000, _int(1, 1_000_000))
    """EVENTIDE_BATCH_MAX_RECORDS: most records a projection batch takes at once."""

    batch_max_wait_ms: int = setting(100, _int(0, 60_000))
    """EVENTIDE_BATCH_MAX_WAIT_MS: longest wait for records before a batch is cut."""

    pipeline_depth: int = setting(1, _int(1, 64))
    """EVENTIDE_PIPELINE_DEPTH: most batches applied but not yet in RocksDB (each
    waiting for its acks) before the engine waits for the oldest. 1 measured
    best at 1,000 and 5,000 events/s (deeper queues more, smaller batches)."""

    retry_attempts: int = setting(5, _int(0, 100))
    """EVENTIDE_RETRY_ATTEMPTS: attempts in the retry topic before a failing record
    is dead-lettered."""

    retry_backoff_ms: int = setting(500, _int(0, 3_600_000))
    """EVENTIDE_RETRY_BACKOFF_MS: delay before the first retry; doubles per attempt."""

    retry_backoff_max_ms: int = setting(60_000, _int(0, 86_400_000))
    """EVENTIDE_RETRY_BACKOFF_MAX_MS: longest delay between two attempts."""

    projections: str = setting(ALL_PROJECTIONS, _projections)
    """EVENTIDE_PROJECTIONS: the projections this worker runs, comma-separated
    (``orders``, ``customers``, ``notifications``, ...), or ``all``: every
    projection declared in agents/. Unknown names fail at start-up."""

    standby_replicas: int = setting(0, _int(0, 3))
    """EVENTIDE_STANDBY_REPLICAS: other workers that keep a warm copy of each table
    partition by following its changelog, so a failover restores only the tail."""

    kafka_client: str = setting("aiokafka", _choice("confluent", "aiokafka"))
    """EVENTIDE_KAFKA_CLIENT: the Kafka client of the projection engine's producer and
    group consumer: ``aiokafka`` or ``confluent`` (librdkafka). Every worker of a
    group must use the same one (their assignors differ); Faust's own clients,
    changelog replays, standbys and rebuilds use aiokafka either way. aiokafka is
    the default, the long-tested path: in the whole engine the two measured even
    on the reference machine, although librdkafka reads 1.6x faster alone (its
    consume and delivery threads hand every batch to the event loop)."""

    session_timeout_ms: int = setting(10_000, _int(6_000, 300_000))
    """EVENTIDE_SESSION_TIMEOUT_MS: how long a silent worker keeps its partitions
    before the group gives them to the others (Kafka's session.timeout.ms)."""

    database_url: SecretUrl = setting(parse=_database_url, factory=lambda: SecretUrl(""))
    """EVENTIDE_DATABASE_URL: the command API's database (domain rows + outbox).
    Empty: SQLite in ``<state_dir>/outbox.sqlite3``; ``sqlite:///path`` or
    ``postgresql://user:password@host:port/db``. Its password is never printed."""

    api_host: str = setting("127.0.0.1", _str)
    """EVENTIDE_API_HOST: address the command API (``eventide api``) binds."""

    api_port: int = setting(6080, _int(1, 65535))
    """EVENTIDE_API_PORT: port of the command API."""

    api_relay: bool = setting(True, _bool)
    """EVENTIDE_API_RELAY: run the outbox relay inside the API process (else run
    ``eventide relay`` separately)."""

    relay_batch_size: int = setting(500, _int(1, 100_000))
    """EVENTIDE_RELAY_BATCH_SIZE: outbox rows the relay publishes per batch."""

    relay_poll_interval: float = setting(0.05, _float(0.001, 60))
    """EVENTIDE_RELAY_POLL_INTERVAL: seconds between outbox polls when idle."""

    relay_metrics_port: int = setting(6081, _int(0, 65535))
    """EVENTIDE_RELAY_METRICS_PORT: port where a standalone ``eventide relay``
    serves Prometheus metrics (0: none; a relay inside the API uses the API's
    ``/metrics``)."""

    outbox_retention: float = setting(86400.0, _float(0, 365 * 86400))
    """EVENTIDE_OUTBOX_RETENTION: seconds published outbox rows and idempotency keys
    are kept before the relay deletes them."""

    relay_target: str = setting("kafka", _choice("kafka", "rabbitmq"))
    """EVENTIDE_RELAY_TARGET: where the outbox relay publishes: ``kafka`` (the
    entity-keyed topics) or ``rabbitmq`` (the topic exchange EVENTIDE_RABBITMQ_EXCHANGE
    at EVENTIDE_RABBITMQ_URL, routing key = event name, publisher confirms)."""

    rabbitmq_url: SecretUrl = setting(
        parse=_amqp_url, factory=lambda: SecretUrl("amqp://guest:guest@127.0.0.1:5672/")
    )
    """EVENTIDE_RABBITMQ_URL: the RabbitMQ of ``eventide bridge rabbitmq`` and of the
    relay's ``rabbitmq`` target, ``amqp://user:password@host:port/vhost``; the dev
    node (``eventide rabbitmq start``) listens on its port. Its password is never printed."""

    rabbitmq_exchange: str = setting("events", _str)
    """EVENTIDE_RABBITMQ_EXCHANGE: the durable topic exchange events are published to
    (routing key = event name)."""

    rabbitmq_queue: str = setting("eventide-bridge", _str)
    """EVENTIDE_RABBITMQ_QUEUE: the durable queue the bridge consumes; several bridges
    on one queue share its messages."""

    rabbitmq_bindings: str = setting("user.*,order.*", _binding_keys)
    """EVENTIDE_RABBITMQ_BINDINGS: binding patterns of the bridge's queue on the
    exchange, comma-separated."""

    rabbitmq_dead_letter_exchange: str = setting("events.dlx", _str)
    """EVENTIDE_RABBITMQ_DEAD_LETTER_EXCHANGE: the fanout exchange rejected messages go
    to (the queue's x-dead-letter-exchange)."""

    rabbitmq_dead_letter_queue: str = setting("events.dlq", _str)
    """EVENTIDE_RABBITMQ_DEAD_LETTER_QUEUE: the durable queue bound to the dead-letter
    exchange, where rejected messages are kept."""

    rabbitmq_prefetch: int = setting(500, _int(1, 65_535))
    """EVENTIDE_RABBITMQ_PREFETCH: unacknowledged messages a bridge holds at once; also
    its batch: the bridge acks a batch once Kafka acknowledged all of it."""

    bridge_metrics_port: int = setting(6082, _int(0, 65535))
    """EVENTIDE_BRIDGE_METRICS_PORT: port (on EVENTIDE_API_HOST) where ``eventide bridge
    rabbitmq`` serves Prometheus metrics (0: none)."""

    rabbitmq_start_timeout: float = setting(60.0, _float(1, 600))
    """EVENTIDE_RABBITMQ_START_TIMEOUT: seconds ``eventide rabbitmq start`` waits for
    the dev node to accept AMQP connections."""

    metrics_interval: float = setting(2.0, _float(0.1, 60))
    """EVENTIDE_METRICS_INTERVAL: seconds between refreshes of the consumer lag metric."""

    admin_endpoints: bool = setting(False, _bool)
    """EVENTIDE_ADMIN_ENDPOINTS: serve POST /admin/pause and /admin/resume on the
    worker's web port (pause or resume the projections' consumer; tests, drills)."""

    http_auth: str = setting("auto", _choice("auto", "on", "off"))
    """EVENTIDE_HTTP_AUTH: bearer tokens on the command API and the worker's HTTP
    endpoints. ``auto``: required once tokens are configured; without any, off with
    a warning, and refused at start-up on an address other than loopback. ``on``:
    required (no tokens configured fails at start-up). ``off``: never checked."""

    http_tokens: Secret = setting(parse=_token_entries, factory=lambda: Secret(""))
    """EVENTIDE_HTTP_TOKENS: accepted tokens, ``principal:role:sha256hex`` separated
    by commas; role ``read``, ``write`` or ``admin``. Never printed."""

    http_tokens_file: str = setting("", _prefix)
    """EVENTIDE_HTTP_TOKENS_FILE: a file of the same entries, one per line (``#``
    comments); read at start-up, added to EVENTIDE_HTTP_TOKENS."""

    http_token: Secret = setting(parse=_secret, factory=lambda: Secret(""))
    """EVENTIDE_HTTP_TOKEN: the bearer token Eventide's own clients send (demo,
    rebuild, check-targets, benchmarks). Never printed."""

    http_open_probes: bool = setting(True, _bool)
    """EVENTIDE_HTTP_OPEN_PROBES: serve ``/health`` and ``/metrics`` without a token
    (false: they need the read role)."""

    http_max_body_bytes: int = setting(65_536, _int(64, 64 * 1_048_576))
    """EVENTIDE_HTTP_MAX_BODY_BYTES: larger request bodies are refused with 413."""

    http_max_header_bytes: int = setting(16_384, _int(1024, 1_048_576))
    """EVENTIDE_HTTP_MAX_HEADER_BYTES: larger request heads (request line and
    headers) are refused with 431; on the worker, the limit of each header line."""

    http_rate_limit: float = setting(200.0, _rate)
    """EVENTIDE_HTTP_RATE_LIMIT: requests per second each client (principal, else
    address) may make on average; 0: no limit. Over it: 429 with Retry-After."""

    http_rate_burst: int = setting(400, _int(1, 1_000_000))
    """EVENTIDE_HTTP_RATE_BURST: requests a client may make at once above the rate."""

    notify_sink: str = setting("file", _choice("file", "webhook"))
    """EVENTIDE_NOTIFY_SINK: where notifications go: ``file`` (JSON lines) or ``webhook``."""

    notify_file: str = setting("", _prefix)
    """EVENTIDE_NOTIFY_FILE: the file sink's JSON-lines file; empty:
    ``<state_dir>/notifications.jsonl`` (see :attr:`notify_path`)."""

    notify_webhook_url: SecretUrl = setting(parse=_http_url, factory=lambda: SecretUrl(""))
    """EVENTIDE_NOTIFY_WEBHOOK_URL: the webhook sink's URL (http or https); a
    password in it is never printed."""

    notify_webhook_timeout: float = setting(5.0, _float(0.1, 600))
    """EVENTIDE_NOTIFY_WEBHOOK_TIMEOUT: seconds one webhook request may take in all."""

    notify_webhook_concurrency: int = setting(16, _int(1, 1024))
    """EVENTIDE_NOTIFY_WEBHOOK_CONCURRENCY: webhook requests in flight at once."""

    notify_retention: float = setting(7 * 86400.0, _float(0, 365 * 86400))
    """EVENTIDE_NOTIFY_RETENTION: seconds a sent notification's event id is
    remembered; a redelivery within this window is never sent again."""

    notify_breaker_failures: int = setting(5, _int(1, 10_000))
    """EVENTIDE_NOTIFY_BREAKER_FAILURES: consecutive sink failures that open the
    circuit breaker."""

    notify_breaker_cooldown: float = setting(10.0, _float(0, 3600))
    """EVENTIDE_NOTIFY_BREAKER_COOLDOWN: seconds an open breaker refuses every send
    before it lets one probe through."""

    pii_encryption: bool = setting(True, _bool)
    """EVENTIDE_PII_ENCRYPTION: the command API and the demo encrypt the personal
    fields of the events they write (schemas/personal.py); false: plaintext, as
    older producers write them (workers read both either way)."""

    pii_kek: Secret = setting(parse=_secret, factory=lambda: Secret(""))
    """EVENTIDE_PII_KEK: the key-encryption keys, ``<kekId>:<base64 of 32 bytes>``,
    comma-separated, the current one first (older ones only unwrap). Never
    printed. Empty: read from :attr:`pii_kek_path`."""

    pii_kek_file: str = setting("", _prefix)
    """EVENTIDE_PII_KEK_FILE: file holding the KEKs, one entry per line, the current
    one first; empty: ``<state_dir>/pii-kek``, generated on first use (development)."""

    sagas: bool = setting(False, _bool)
    """EVENTIDE_SAGAS: with EVENTIDE_PROJECTIONS=all, also run the order saga
    orchestrator (the ``sagas`` projection), which sends commands to the
    participants and ``order.saga_*`` events to order-events. Off by default;
    naming ``sagas`` in EVENTIDE_PROJECTIONS runs it too."""

    saga_step_timeout_ms: int = setting(10_000, _int(10, 86_400_000))
    """EVENTIDE_SAGA_STEP_TIMEOUT_MS: a saga step (reserve, pay, ship) with no reply
    within this time has failed: the saga compensates the steps done."""

    saga_retry_ms: int = setting(2_000, _int(10, 3_600_000))
    """EVENTIDE_SAGA_RETRY_MS: a compensation with no acknowledgement within this
    time is sent again (same command id), until it is acknowledged."""

    saga_tick_ms: int = setting(500, _int(10, 60_000))
    """EVENTIDE_SAGA_TICK_MS: how often a worker writes a tick to each saga-replies
    partition it owns; deadlines are checked when a tick is applied, so a timeout
    fires up to this much late."""

    participant_failure_rate: float = setting(0.0, _float(0, 1))
    """EVENTIDE_PARTICIPANT_FAILURE_RATE: share (0..1) of forward commands
    (reserve, pay, ship) a demo participant rejects; chosen per command id, so a
    redelivered command gets the same answer. Compensations always succeed."""

    participant_latency_ms: int = setting(0, _int(0, 600_000))
    """EVENTIDE_PARTICIPANT_LATENCY_MS: delay before a demo participant applies
    and answers each batch of commands it fetches."""

    participant_never_answer: bool = setting(False, _bool)
    """EVENTIDE_PARTICIPANT_NEVER_ANSWER: the demo participant neither applies nor
    answers forward commands (a service that is down): sagas time out there."""

    participant_log_dir: str = setting("", _prefix)
    """EVENTIDE_PARTICIPANT_LOG_DIR: folder of the participants' logs of applied
    commands, ``<service>.jsonl``; empty: ``<state_dir>/participants``."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``EVENTIDE_*`` variables, defaults for the rest."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = PREFIX + f.name.upper()
            if var in env:
                values[f.name] = f.metadata[PARSE](var, env[var])
        settings = cls(**values)
        settings.validate()
        return settings

    def to_env(self) -> dict[str, str]:
        """The EVENTIDE_* variables that reproduce these settings in a child process
        (secrets in clear: a child needs the real value)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            text = value.reveal() if isinstance(value, SecretUrl | Secret) else str(value)
            env[PREFIX + f.name.upper()] = text
        return env

    def validate(self) -> None:
        """Check cross-field rules; raise :class:`SettingsError` naming the variable."""
        self.bootstrap_servers  # parses the URL  # noqa: B018
        self.kafka_security.validate()
        if not self.app_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise SettingsError(
                f"EVENTIDE_APP_ID={self.app_id!r}: use letters, digits, '.', '_' and '-' only"
            )
        if self.notify_sink == "webhook" and not self.notify_webhook_url.value:
            raise SettingsError(
                "EVENTIDE_NOTIFY_SINK=webhook needs EVENTIDE_NOTIFY_WEBHOOK_URL "
                "(e.g. https://hooks.example.com/notify)"
            )

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` strings for Kafka clients, parsed from :attr:`broker_url`."""
        return parse_broker_url(self.broker_url)

    @property
    def kafka_security(self) -> KafkaSecurity:
        """The TLS and SASL settings of every Kafka client (streams/kafka_clients.py)."""
        return KafkaSecurity(**{k: getattr(self, name) for k, name in SECURITY_FIELDS.items()})

    @property
    def broker_port(self) -> int:
        """Port of the first bootstrap server: the dev broker listens there."""
        return int(self.bootstrap_servers[0].rsplit(":", 1)[1])

    @property
    def rabbitmq_port(self) -> int:
        """Port of :attr:`rabbitmq_url` (5672, 5671 for amqps, when it names none)."""
        parts = urlsplit(self.rabbitmq_url.value)
        return parts.port or (5671 if parts.scheme == "amqps" else 5672)

    @property
    def rabbitmq_binding_keys(self) -> tuple[str, ...]:
        """:attr:`rabbitmq_bindings` as a tuple of patterns."""
        return tuple(self.rabbitmq_bindings.split(","))

    @property
    def projection_names(self) -> tuple[str, ...] | None:
        """:attr:`projections` as a tuple of names; None for ``all``."""
        if self.projections == ALL_PROJECTIONS:
            return None
        return tuple(self.projections.split(","))

    @property
    def limits(self) -> Limits:
        """The input limits every decoded record must stay within."""
        return Limits(
            max_record_bytes=self.max_record_bytes,
            max_json_depth=self.max_json_depth,
            max_string_length=self.max_string_length,
            max_array_length=self.max_array_length,
        )

    @property
    def projection_group(self) -> str:
        """Consumer group of the batch projection engine."""
        return f"{self.app_id}-projections"

    @property
    def notify_path(self) -> Path:
        """The file sink's file: :attr:`notify_file`, else under :attr:`state_dir`."""
        return (
            Path(self.notify_file) if self.notify_file else self.state_dir / "notifications.jsonl"
        )

    @property
    def pii_kek_path(self) -> Path:
        """The KEK file: :attr:`pii_kek_file`, else ``<state_dir>/pii-kek``."""
        return Path(self.pii_kek_file) if self.pii_kek_file else self.state_dir / "pii-kek"

    @property
    def participant_logs(self) -> Path:
        """Folder of the participants' logs: :attr:`participant_log_dir`, else
        ``<state_dir>/participants``."""
        if self.participant_log_dir:
            return Path(self.participant_log_dir)
        return self.state_dir / "participants"

    @property
    def web_url(self) -> str:
        """Base URL of this worker's HTTP server."""
        return f"http://{self.web_host}:{self.web_port}"

    def topic(self, name: str) -> str:
        """The full name of a catalogue topic, with the configured prefix."""
        return f"{self.topic_prefix}{name}"
