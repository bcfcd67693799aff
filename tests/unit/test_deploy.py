"""The deployment examples (deploy/docker, deploy/kubernetes) against the code.

No Docker or Kubernetes here: the files are parsed. Every EVENTIDE_* variable
they name must be a setting, every container's settings must parse as a
worker or the API would at start-up, and every port (container, Service,
probe, Prometheus scrape, EXPOSE) must be the one the process serves.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventide.cli import main
from streams.setting_types import PREFIX
from streams.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
SETTINGS = {PREFIX + f.name.upper() for f in fields(Settings)}
# What a valueFrom yields in a cluster, for parsing the settings here.
FROM_CLUSTER = {
    "status.podIP": "10.1.2.3",
    "url": "postgresql://eventide:pw@postgres:5432/eventide",
}


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def applied() -> list[dict[str, Any]]:
    """The documents kustomization.yaml applies (the Secret example is not one)."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / resource).read_text()) if d]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def workloads() -> list[dict[str, Any]]:
    return [d for d in applied() if d["kind"] in ("StatefulSet", "Deployment")]


def eventide_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (w, c)
        for w in workloads()
        for c in w["spec"]["template"]["spec"]["containers"]
        if c["image"].startswith("eventide:")
    ]


def dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in line[4:].split()))
    return env


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment the container's process sees (image, ConfigMaps, env)."""
    env = dict(dockerfile_env())
    for source in container.get("envFrom", []):
        env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]
            key = ref["fieldRef"]["fieldPath"] if "fieldRef" in ref else ref["secretKeyRef"]["key"]
            env[var["name"]] = FROM_CLUSTER[key]
    return env


def served_port(container: dict[str, Any]) -> int:
    """The port the container's eventide command serves, from its settings."""
    settings = Settings.from_env(container_env(container))
    return {"worker": settings.web_port, "api": settings.api_port}[container["args"][0]]


def port_of(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a name or a number) as the container's port number."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if isinstance(port, str):
        assert port in ports, f"{container['name']} has no port named {port!r}"
        return ports[port]
    assert port in ports.values(), f"{container['name']} has no port {port}"
    return port


def selected(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of the pods a Service selects."""
    selector = service["spec"]["selector"].items()
    return [
        c
        for w in workloads()
        if selector <= w["spec"]["template"]["metadata"]["labels"].items()
        for c in w["spec"]["template"]["spec"]["containers"]
    ]


def test_every_eventide_variable_named_is_a_setting() -> None:
    files = [DOCKERFILE, DEPLOY / "kustomization.yaml", *K8S.glob("*.yaml")]
    named = {v for f in files for v in re.findall(r"\bEVENTIDE_[A-Z0-9_]+", f.read_text())}
    assert named, "the examples name no setting at all"
    assert sorted(named - SETTINGS) == []


def test_every_container_starts_with_valid_settings_on_the_port_it_declares() -> None:
    commands = set(main.commands)
    containers = eventide_containers()
    assert {c["args"][0] for _, c in containers} == {"worker", "api"}
    for _, container in containers:
        assert container["args"][0] in commands
        Settings.from_env(container_env(container))  # raises naming a bad variable
        assert port_of(container, "http") == served_port(container)


def test_probes_ask_the_served_port() -> None:
    for _, container in eventide_containers():
        ready, alive = container["readinessProbe"], container["livenessProbe"]
        assert ready["httpGet"]["path"] == "/health"
        assert alive["httpGet"]["path"] == "/metrics"  # 200 also while the broker is away
        for probe in (ready, alive):
            assert port_of(container, probe["httpGet"]["port"]) == served_port(container)


def test_services_lead_to_a_served_port() -> None:
    services = [d for d in applied() if d["kind"] == "Service"]
    assert services
    for service in services:
        containers = selected(service)
        assert containers, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for container in containers:
                assert port_of(container, port["targetPort"]) == served_port(container)
            if service["spec"].get("clusterIP") == "None":  # scraped pod by pod
                assert port["port"] == served_port(containers[0])


def test_workers_keep_their_tables_on_a_volume_of_their_own() -> None:
    worker = find("StatefulSet", "eventide-worker")
    [container] = worker["spec"]["template"]["spec"]["containers"]
    data_dir = Settings.from_env(container_env(container)).data_dir
    [claim] = worker["spec"]["volumeClaimTemplates"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert data_dir.is_relative_to(mount["mountPath"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_secret_files_the_settings_name_are_in_the_mounted_secret() -> None:
    example = find("Secret", "eventide-secrets")
    for _, container in eventide_containers():
        env = container_env(container)
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
        for var in ("EVENTIDE_HTTP_TOKENS_FILE", "EVENTIDE_PII_KEK_FILE"):
            path = Path(env[var])
            assert path.parent == Path(mount["mountPath"])
            assert path.name in example["stringData"]


def test_prometheus_scrapes_every_workload_with_the_alert_rules() -> None:
    config = yaml.safe_load(find("ConfigMap", "eventide-prometheus")["data"]["prometheus.yml"])
    scraped = set()
    for job in config["scrape_configs"]:
        assert job["metrics_path"] == "/metrics"
        for sd in job["dns_sd_configs"]:
            for name in sd["names"]:
                service = find("Service", name)
                assert service["spec"]["clusterIP"] == "None"  # a record per pod
                for container in selected(service):
                    assert sd["port"] == served_port(container)
                    scraped.add(container["args"][0])
    assert scraped == {"worker", "api"}

    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    [generated] = kustomization["configMapGenerator"]
    [rules_file] = generated["files"]
    assert (DEPLOY / rules_file) == DEPLOY / "prometheus" / "eventide-alerts.yml"
    rules = yaml.safe_load((DEPLOY / rules_file).read_text())
    assert any(g["rules"] for g in rules["groups"])
    prometheus = find("Deployment", "eventide-prometheus")["spec"]["template"]["spec"]
    [volume] = [
        v
        for v in prometheus["volumes"]
        if "configMap" in v and v["configMap"]["name"] == generated["name"]
    ]
    [mount] = [
        m
        for c in prometheus["containers"]
        for m in c["volumeMounts"]
        if m["name"] == volume["name"]
    ]
    assert config["rule_files"] == [f"{mount['mountPath']}/{Path(rules_file).name}"]


def test_the_image_exposes_the_default_ports_and_runs_the_worker() -> None:
    text = DOCKERFILE.read_text()
    exposed = {
        int(p) for line in text.splitlines() if line.startswith("EXPOSE ") for p in line.split()[1:]
    }
    defaults = Settings()
    assert exposed == {defaults.web_port, defaults.api_port}
    assert 'ENTRYPOINT ["eventide"]' in text and 'CMD ["worker"]' in text
    image = Settings.from_env(dockerfile_env())
    assert image.web_host == image.api_host == "0.0.0.0"


@pytest.mark.parametrize(
    "resource", yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
)
def test_kustomization_resources_exist(resource: str) -> None:
    assert (DEPLOY / resource).is_file()
