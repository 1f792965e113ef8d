"""The prod overlay talks to Postgres with ``sslmode=verify-full`` against the cluster's CA."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tests.unit.test_ops import objects, render


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
