"""deploy/kubernetes (a kustomize base): every built-in resource passes ``kubernetes-validate
--strict`` against a pinned Kubernetes version (its schemas ship inside the package: no
network), the ServiceMonitor passes a JSON schema written from the Prometheus operator's CRD
documentation, kustomization.yaml lists every file, the manifests agree with the proxy's
configuration in the ConfigMap (ports, shutdown delay + drain), and yamllint passes on every
YAML file under deploy/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from xks_proxy.config import load_config
from xks_proxy.scaffold import scaffold

DEPLOY = Path(__file__).parent.parent / "deploy"
BASE = DEPLOY / "kubernetes"
# EKS's oldest version in standard support when this was written; the schemas are in the
# pinned kubernetes-validate package.
KUBERNETES_VERSION = "1.31.0"
BIN = Path(sys.executable).parent

# The Prometheus operator's monitoring.coreos.com/v1 ServiceMonitor: the documented fields this
# base may use (API reference, ServiceMonitorSpec and Endpoint); anything else is a typo.
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "metricRelabelings": {"type": "array"},
                            "relabelings": {"type": "array"},
                            "tlsConfig": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource of the base by (kind, name)."""
    found = {}
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in documents(path):
                found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def proxy_config() -> dict[str, Any]:
    configmap = resources()["ConfigMap", "xks-proxy-config"]
    return tomllib.loads(configmap["data"]["xks-proxy.toml"])


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION,
         *map(str, paths)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_kustomization_lists_every_file() -> None:
    kustomization = documents(BASE / "kustomization.yaml")[0]
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_builtin_resources_pass_kubernetes_validate_strict(tmp_path: Path) -> None:
    paths = [p for p in sorted(BASE.glob("*.yaml"))
             if p.name not in {"kustomization.yaml", "servicemonitor.yaml"}]  # fmt: skip
    result = kubernetes_validate(*paths)
    print(result.stdout + result.stderr, file=sys.stderr)
    assert result.returncode == 0
    passed = re.findall(r"passed for resource (\S+) against version", result.stdout)
    expected = {(kind, name) for kind, name in resources() if kind != "ServiceMonitor"}
    assert sorted(passed) == sorted(f"{kind.lower()}/{name}" for kind, name in expected)
    assert "WARN" not in result.stdout + result.stderr
    # --strict is strict: an unknown field (a typo) fails.
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        (BASE / "deployment.yaml")
        .read_text()
        .replace("revisionHistoryLimit", "revisionHistoryLimits")
    )
    assert kubernetes_validate(typo).returncode != 0


def test_service_monitor_matches_the_crd_shape() -> None:
    monitor = resources()["ServiceMonitor", "xks-proxy"]
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**monitor, "spec": {**monitor["spec"], "endpoint": []}},
                            SERVICE_MONITOR_SCHEMA)  # fmt: skip
    # It selects the metrics Service, by the name of a port that Service has.
    service = resources()["Service", "xks-proxy-metrics"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }


def test_deployment_follows_the_proxys_life_cycle_and_is_locked_down() -> None:
    config = proxy_config()
    deployment = resources()["Deployment", "xks-proxy"]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    server = config["server"]
    assert (pod["terminationGracePeriodSeconds"]
            > server["shutdown_delay_seconds"] + server["drain_seconds"])  # fmt: skip
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"xks": server["port"], "ping": server["ping_port"],
                     "metrics": config["metrics"]["port"]}  # fmt: skip
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": "ping"}
    for each in [*pod["initContainers"], container]:
        context = each["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert set(each["resources"]) == {"requests", "limits"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "xks-proxy-config"
    secrets = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    assert {"xks-proxy-kek", "xks-proxy-credentials", "xks-proxy-tls"} <= secrets
    pin = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert pin["name"] == "xks-proxy-hsm-pin"
    zone = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert zone[0]["podAffinityTerm"]["topologyKey"] == "topology.kubernetes.io/zone"
    # Every file the ConfigMap names lives on a mounted volume (the root is read-only).
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    for path in (config["credentials_file"], config["tls"]["certificate"],
                 config["backends"]["local"]["kek"].removeprefix("file:"),
                 config["backends"]["local"]["path"], config["audit"]["path"],
                 server["pid_file"]):  # fmt: skip
        assert any(path.startswith(mount + "/") for mount in mounts), path


def test_service_network_policy_and_disruption_budget() -> None:
    found = resources()
    service = found["Service", "xks-proxy"]
    annotations = service["metadata"]["annotations"]
    prefix = "service.beta.kubernetes.io/aws-load-balancer-"
    assert annotations[prefix + "type"] == "external"
    assert annotations[prefix + "backend-protocol"] == "tcp"  # TLS passthrough
    assert annotations[prefix + "healthcheck-path"] == "/ping"
    assert annotations[prefix + "healthcheck-port"] == str(proxy_config()["server"]["ping_port"])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["xks"]
    policy = found["NetworkPolicy", "xks-proxy"]["spec"]
    open_rule, metrics_rule = policy["ingress"]
    assert "from" not in open_rule  # KMS from anywhere
    assert {p["port"] for p in open_rule["ports"]} == {"xks", "ping"}
    assert [p["port"] for p in metrics_rule["ports"]] == ["metrics"]
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]  # fmt: skip
    assert found["PodDisruptionBudget", "xks-proxy"]["spec"]["maxUnavailable"] == 1
    assert found["HorizontalPodAutoscaler", "xks-proxy"]["spec"]["minReplicas"] == 3


def test_yamllint_passes_on_every_deploy_yaml_file() -> None:
    files = sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})
    assert len(files) >= 10
    result = subprocess.run(
        [str(BIN / "yamllint"), "--strict", "-c", str(DEPLOY / "yamllint.yml"), *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "")


def test_the_configmaps_configuration_loads_in_the_proxy(tmp_path: Path) -> None:
    """The ConfigMap's xks-proxy.toml, with the pod's mounts laid out under a temp root (files
    from a scaffolded deployment), passes the proxy's own configuration loader."""
    made = scaffold(tmp_path / "made", name="payments", key_id="payments-key-1", tls=True)
    root = tmp_path / "root"
    layout = {
        "etc/xks-proxy/kek/kek.key": "kek.key",
        "etc/xks-proxy/credentials/credentials.json": "credentials.json",
        "etc/xks-proxy/tls/tls.crt": "tls/server.pem",
        "etc/xks-proxy/tls/tls.key": "tls/server.key",
        "etc/xks-proxy/tls/ca.crt": "tls/server.pem",
        "var/lib/xks-proxy/keys.db": "keys.db",
    }
    for target, source in layout.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(made.config_path.parent / source, root / target)
    for directory in ("var/log/xks-proxy", "run/xks-proxy"):
        (root / directory).mkdir(parents=True)
    configmap = resources()["ConfigMap", "xks-proxy-config"]
    text = configmap["data"]["xks-proxy.toml"]
    for mount in ("/etc/xks-proxy/", "/var/lib/xks-proxy/", "/var/log/xks-proxy/",
                  "/run/xks-proxy/"):  # fmt: skip
        assert mount in text
        text = text.replace(mount, f"{root}{mount}")
    path = root / "etc" / "xks-proxy" / "config" / "xks-proxy.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    config = load_config(path)
    assert [store.name for store in config.key_stores] == ["payments"]
    assert config.server.ping_port == 8081
