"""Security in the kustomize manifests: Postgres with ``sslmode=verify-full`` against the
cluster's CA (prod), NATS TLS and users in the base ``nats.conf``, each service secure as its own
NATS user with only the Secrets it needs; the dev overlay says it runs without."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from contracts.subjects import StreamNames
from services.security.natsauth import authorization_block, users
from tests.unit.test_ops import configmap_env, mounted_nats_conf, nats_block, objects, render


def test_prod_services_verify_the_databases_certificate_and_name() -> None:
    deployments = objects(render("overlays/prod"), "Deployment")
    assert len(deployments) == 4
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        query = parse_qs(urlsplit(env["JETLEDGER_DATABASE_URL"]).query)
        assert query["sslmode"] == ["verify-full"], deployment["metadata"]["name"]
        (root_cert,) = query["sslrootcert"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = mounts[root_cert.rsplit("/", 1)[0]]
        secrets = {v["name"]: v.get("secret", {}).get("secretName") for v in spec["volumes"]}
        assert secrets[volume] == "jetledger-pg-ca"


def test_base_nats_conf_holds_tls_and_the_users_natsauth_generates() -> None:
    docs = render("overlays/prod")
    conf = mounted_nats_conf(docs)
    expected = authorization_block(users(StreamNames()))
    assert expected in conf  # users and permissions exactly as the code generates them
    client_tls = nats_block(conf, "tls")
    assert client_tls is not None and "verify_and_map: true" in client_tls
    cluster = conf.split("cluster {", 1)[1]
    assert "tls {" in cluster and "verify: true" in cluster  # routes: mutual TLS


def test_prod_services_run_secure_each_as_its_own_nats_user() -> None:
    docs = render("overlays/prod")
    for deployment in objects(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        env = configmap_env(docs, deployment)
        assert env["JETLEDGER_SECURITY"] == "on"
        assert env["JETLEDGER_NATS_URL"].startswith("tls://")
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        own = {e["name"]: e.get("value") for e in container["env"]}
        assert own["JETLEDGER_NATS_USER"] == name
        secrets = {v["name"]: v.get("secret", {}) for v in spec["volumes"]}
        assert secrets["tls"]["secretName"] == f"jetledger-{name}-tls"
        items = {item["key"] for item in secrets["auth"]["items"]}
        # least privilege: only the notification service opens webhook secrets, only the
        # transaction service calls another service with a token of its own
        assert ("secret-keys.json" in items) == (name == "notification")
        assert ("transaction.token" in items) == (name == "transaction")
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        for variable in ("TLS_CERT_FILE", "NATS_KEY_FILE", "EVENT_KEYS_FILE"):
            assert env[f"JETLEDGER_{variable}"].rsplit("/", 1)[0] in mounts


def test_the_dev_overlay_says_it_runs_without_security() -> None:
    docs = render("overlays/dev")
    for deployment in objects(docs, "Deployment"):
        env = configmap_env(docs, deployment)
        assert env["JETLEDGER_SECURITY"] == "off"
        assert env["JETLEDGER_NATS_URL"].startswith("nats://")
