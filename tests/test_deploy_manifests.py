"""What a newcomer to the Kubernetes manifests relies on, read from the sources (the
rendered overlays are validated by deploy/check.sh): a service-mode overlay whose secrets
come from Secrets, an egress policy that allows what the gateway talks to, and guides that
say how to build, push and find all this."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_egress_allows_pop3_oauth_redis_and_dns_over_udp_and_tcp() -> None:
    policy = load(DEPLOY / "base/networkpolicy.yaml")
    egress = {
        (port["port"], port["protocol"])
        for rule in policy["spec"]["egress"]
        for port in rule["ports"]
    }
    assert egress == {
        (110, "TCP"),
        (995, "TCP"),
        (443, "TCP"),
        (6379, "TCP"),
        (53, "UDP"),
        (53, "TCP"),
    }
    assert all(rule.get("ports") for rule in policy["spec"]["egress"])  # none allows all


def test_service_mode_takes_mailboxes_from_a_configmap_and_secrets_from_secrets() -> None:
    overlay = DEPLOY / "overlays/service-mode"
    kustomization = load(overlay / "kustomization.yaml")
    assert "../prod" in kustomization["resources"]  # Redis and the cache secret from prod
    (files,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "pop3gw-files"]
    config = tomllib.loads((overlay / files["files"][0]).read_text())
    literals = next(
        g["literals"] for g in kustomization["configMapGenerator"] if g["name"] == "pop3gw-config"
    )
    assert "POP3GW_CONFIG=/etc/pop3gw/config/config.toml" in literals
    assert "api_keys" not in config  # in the Secret
    secret = load(overlay / "secret.example.yaml")
    patch = load(overlay / "deployment-patch.yaml")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in patch["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/etc/pop3gw/config"]]["configMap"]["name"] == "pop3gw-files"
    passwords = volumes[mounts["/etc/pop3gw/passwords"]]["secret"]
    assert passwords["secretName"] == secret["metadata"]["name"]
    for box in config["mailboxes"]:
        assert box["password_file"] == f"/etc/pop3gw/passwords/{box['id']}"
        assert {"key": box["id"], "path": box["id"]} in passwords["items"]
        assert secret["stringData"][box["id"]].startswith("REPLACE-WITH-")
    (api_keys,) = [e for e in container["env"] if e["name"] == "POP3GW_API_KEYS"]
    assert api_keys["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert "service-mode" in (DEPLOY / "check.sh").read_text()  # validated like the others


def test_the_guides_say_how_to_build_push_and_deploy() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "[deploy/README.md](deploy/README.md)" in readme
    guide = (DEPLOY / "README.md").read_text()
    assert "## Build and push the image" in guide
    for step in ("docker build -t", "docker push", "kustomize edit set image", "service-mode"):
        assert step in guide, step
    for overlay in ("dev", "prod"):
        text = (DEPLOY / f"overlays/{overlay}/kustomization.yaml").read_text()
        assert "POP3GW_DEFAULT_UPSTREAM=pop3s://" in text, overlay
