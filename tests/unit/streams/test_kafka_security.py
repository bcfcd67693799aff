"""EVENTIDE_KAFKA_* settings: validated at start-up, secrets masked, one builder
of each client library's options."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import faust
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from eventide.cli import main
from eventide.tools.devsecurity import issue, make_ca
from streams.exceptions import SettingsError
from streams.kafka_clients import aiokafka_options, confluent_options, faust_credentials
from streams.settings import Settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA file and a client certificate + key signed by it."""
    home = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca()
    cert, key = issue(ca, ca_key, "client", server=False)
    files = {"ca": home / "ca.pem", "cert": home / "client.pem", "key": home / "client.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def sasl_ssl(pki: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "EVENTIDE_KAFKA_USERNAME": "worker",
        "EVENTIDE_KAFKA_PASSWORD": "s3cret-pw",
        "EVENTIDE_KAFKA_CA_FILE": str(pki["ca"]),
        **extra,
    }


def test_plaintext_is_the_default_and_needs_nothing():
    s = Settings.from_env({})
    assert s.kafka_security_protocol == "PLAINTEXT" and not s.kafka_security.secured
    assert aiokafka_options(s) == {
        "bootstrap_servers": ["127.0.0.1:9092"],
        "security_protocol": "PLAINTEXT",
    }
    assert confluent_options(s) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "plaintext",
    }
    assert faust_credentials(s) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "TLS"},
         "EVENTIDE_KAFKA_SECURITY_PROTOCOL='TLS': expected one of PLAINTEXT, SSL, SASL_PLAINTEXT"),
        ({"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "EVENTIDE_KAFKA_SASL_MECHANISM": "MD5"},
         "EVENTIDE_KAFKA_SASL_MECHANISM='MD5': expected one of PLAIN, SCRAM-SHA-256"),
        ({"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
         "EVENTIDE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs EVENTIDE_KAFKA_USERNAME"),
        ({"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "EVENTIDE_KAFKA_USERNAME": "w"},
         "needs EVENTIDE_KAFKA_PASSWORD or EVENTIDE_KAFKA_PASSWORD_FILE for "
         "EVENTIDE_KAFKA_USERNAME='w'"),
        ({"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SSL", "EVENTIDE_KAFKA_CA_FILE": "/nope/ca.pem"},
         "EVENTIDE_KAFKA_CA_FILE='/nope/ca.pem': no such file"),
        ({"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "EVENTIDE_KAFKA_USERNAME": "w",
          "EVENTIDE_KAFKA_PASSWORD_FILE": "/nope/pw"},
         "EVENTIDE_KAFKA_PASSWORD_FILE='/nope/pw': no such file"),
        ({"EVENTIDE_KAFKA_USERNAME": "w"},
         "EVENTIDE_KAFKA_USERNAME is set but EVENTIDE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not "
         "use SASL"),
        ({"EVENTIDE_KAFKA_CA_FILE": "/etc/hosts"},
         "EVENTIDE_KAFKA_CA_FILE='/etc/hosts' is set but EVENTIDE_KAFKA_SECURITY_PROTOCOL="
         "PLAINTEXT does not use TLS"),
        ({"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SSL", "EVENTIDE_KAFKA_CERT_FILE": "/etc/hosts"},
         "mutual TLS needs both EVENTIDE_KAFKA_CERT_FILE and EVENTIDE_KAFKA_KEY_FILE"),
        ({"EVENTIDE_KAFKA_CHECK_HOSTNAME": "maybe"},
         "EVENTIDE_KAFKA_CHECK_HOSTNAME='maybe': expected true or false"),
    ],
)  # fmt: skip
def test_a_bad_combination_fails_at_start_up_naming_the_setting(env, message):
    with pytest.raises(SettingsError) as bad:
        Settings.from_env(env)
    assert message in str(bad.value)


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path):
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(SettingsError, match=r"EVENTIDE_KAFKA_CA_FILE='.*ca.pem': not a PEM file"):
        Settings.from_env({"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SSL",
                           "EVENTIDE_KAFKA_CA_FILE": str(junk)})  # fmt: skip


def test_a_missing_ca_file_stops_the_worker_naming_the_setting():
    result = CliRunner().invoke(
        main,
        ["worker"],
        env={"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SSL", "EVENTIDE_KAFKA_CA_FILE": "/nope/ca.pem"},
    )
    assert result.exit_code == 2
    assert "eventide: error: EVENTIDE_KAFKA_CA_FILE='/nope/ca.pem': no such file" in result.output


def test_sasl_ssl_options_for_every_client_library(pki):
    s = Settings.from_env(sasl_ssl(pki, EVENTIDE_KAFKA_SASL_MECHANISM="scram-sha-256"))
    options = aiokafka_options(s)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "worker",
        "s3cret-pw",
    )
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert confluent_options(s) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "sasl_ssl",
        "ssl.ca.location": str(pki["ca"]),
        "enable.ssl.certificate.verification": True,
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "worker",
        "sasl.password": "s3cret-pw",
    }
    credentials = faust_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.password == "s3cret-pw" and credentials.ssl_context is not None


def test_password_file_mutual_tls_and_no_hostname_check(pki, tmp_path):
    password = tmp_path / "pw"
    password.write_text("from-a-file\n")
    s = Settings.from_env(
        sasl_ssl(
            pki,
            EVENTIDE_KAFKA_PASSWORD="",
            EVENTIDE_KAFKA_PASSWORD_FILE=str(password),
            EVENTIDE_KAFKA_CERT_FILE=str(pki["cert"]),
            EVENTIDE_KAFKA_KEY_FILE=str(pki["key"]),
            EVENTIDE_KAFKA_CHECK_HOSTNAME="false",
        )
    )
    assert aiokafka_options(s)["sasl_plain_password"] == "from-a-file"
    assert not aiokafka_options(s)["ssl_context"].check_hostname
    rd = confluent_options(s)
    assert rd["sasl.password"] == "from-a-file"
    assert rd["ssl.certificate.location"] == str(pki["cert"])
    assert rd["ssl.key.location"] == str(pki["key"])
    assert rd["ssl.endpoint.identification.algorithm"] == "none"


def test_ssl_without_sasl_gives_faust_ssl_credentials(pki):
    s = Settings.from_env(
        {"EVENTIDE_KAFKA_SECURITY_PROTOCOL": "SSL", "EVENTIDE_KAFKA_CA_FILE": str(pki["ca"])}
    )
    assert isinstance(faust_credentials(s), faust.SSLCredentials)
    assert "sasl_mechanism" not in aiokafka_options(s)


def test_secrets_are_masked_in_settings_output_and_reprs(pki):
    env = sasl_ssl(pki, EVENTIDE_KAFKA_PASSWORD="pw-canary-81", EVENTIDE_KAFKA_KEY_PASSWORD="kc-9")
    result = CliRunner().invoke(main, ["settings"], env=env)
    assert result.exit_code == 0, result.output
    assert "EVENTIDE_KAFKA_PASSWORD=***" in result.output.splitlines()
    assert "EVENTIDE_KAFKA_KEY_PASSWORD=***" in result.output.splitlines()
    assert "EVENTIDE_KAFKA_USERNAME=worker" in result.output.splitlines()
    settings = Settings.from_env(env)
    for text in (result.output, repr(settings), str(settings.kafka_security)):
        assert "pw-canary-81" not in text and "kc-9" not in text
    # A child process gets the real values.
    assert settings.to_env()["EVENTIDE_KAFKA_PASSWORD"] == "pw-canary-81"
    assert Settings.from_env(settings.to_env()) == settings


class SaslAuthenticateRequest_v0:
    """Stands in for aiokafka's request, whose repr shows the SASL/PLAIN bytes."""

    def __repr__(self) -> str:
        return "SaslAuthenticateRequest_v0(sasl_auth_bytes=b'\\x00worker\\x00pw-canary-17')"


def test_aiokafka_debug_lines_never_carry_a_sasl_password(caplog):
    conn_log = logging.getLogger("aiokafka.conn")
    with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
        conn_log.debug("Request to %s:%d %d: %s", "h", 1, 1, SaslAuthenticateRequest_v0())
        conn_log.debug("Request to %s:%d %d: %s", "h", 1, 2, "MetadataRequest_v5")
    assert "pw-canary-17" not in caplog.text
    assert "MetadataRequest_v5" in caplog.text
