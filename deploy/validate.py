"""Checks of the rendered manifests that the generic tools cannot make (deploy/check.sh).

    validate.py crds RENDERED CORE_OUT   validate custom resources against deploy/schemas/;
                                         write every other document to CORE_OUT
    validate.py policy OVERLAY RENDERED  what deploy/README.md promises of an overlay
    validate.py env RENDERED             the gateway container's environment, as an env file
    validate.py files RENDERED DIR       writes the files the gateway's ConfigMap and
                                         Secret volumes hold under DIR (placeholders
                                         replaced by stand-ins) and prints podman's
                                         --volume arguments, one a line
    validate.py known-vars ENVFILE JSON  every POP3GW_* variable names a setting that
                                         `pop3gw check-config` (its output: JSON) knows
    validate.py lock PYPROJECT LOCK      the lock pins a version of every dependency that
                                         pyproject.toml declares, inside its range
    validate.py mutate HOW RENDERED OUT  a broken copy, for the negative checks: HOW is
                                         misspell (a Deployment field), no-apiversion,
                                         crd-misspell (a ServiceMonitor field), or insecure
                                         (a writable root filesystem, privilege escalation)

Runs with the check tools' virtualenv (PyYAML, jsonschema, packaging). Each command prints
what is wrong and exits 1, or prints nothing and exits 0.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Custom resources, by (apiVersion, kind): kubernetes-validate has schemas for built-in
# kinds only and just warns about others, so these are validated here, with a schema this
# repository ships, and kept out of what kubernetes-validate sees. Any other unknown kind
# still reaches kubernetes-validate, whose warning then fails the check.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}

# The gateway's SIGTERM sequence: delay + grace, then up to 10 s flushing the last
# responses (gateway/__main__.py) and the QUIT of idle sessions.
SHUTDOWN_MARGIN_SECONDS = 10
PLACEHOLDER = "REPLACE-WITH-"


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def problems_of(errors: list[str]) -> int:
    for error in errors:
        print(error)
    return 1 if errors else 0


# -- crds ------------------------------------------------------------------------------


def cmd_crds(rendered: str, core_out: str) -> int:
    from jsonschema import Draft202012Validator

    docs = load(rendered)
    errors: list[str] = []
    core: list[dict[str, Any]] = []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        schema_file = CRD_SCHEMAS.get(key)  # type: ignore[arg-type]
        if schema_file is None:
            core.append(doc)
            continue
        schema = json.loads((SCHEMAS / schema_file).read_text())
        name = (doc.get("metadata") or {}).get("name", "?")
        for err in sorted(Draft202012Validator(schema).iter_errors(doc), key=str):
            where = ".".join(str(p) for p in err.absolute_path) or "(top)"
            errors.append(f"ERROR {rendered} {key[1]}/{name}: {where}: {err.message}")
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    return problems_of(errors)


# -- policy ----------------------------------------------------------------------------


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """Name -> value as the container sees it (ConfigMaps and Secrets resolved)."""
    configmaps = by_kind(docs, "ConfigMap")
    secrets = by_kind(docs, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]].get("data", {}))
        elif "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]].get("stringData", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item.get("valueFrom", {})
        if "secretKeyRef" in ref:
            sel = ref["secretKeyRef"]
            env[item["name"]] = secrets[sel["name"]]["stringData"][sel["key"]]
        elif "configMapKeyRef" in ref:
            sel = ref["configMapKeyRef"]
            env[item["name"]] = configmaps[sel["name"]]["data"][sel["key"]]
    return env


def check_pod(name: str, pod: dict[str, Any], errors: list[str]) -> None:
    ctx = pod.get("securityContext", {})
    if pod.get("automountServiceAccountToken") is not False:
        errors.append(f"{name}: automountServiceAccountToken must be false")
    if ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        errors.append(f"{name}: pod seccompProfile must be RuntimeDefault")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        where = f"{name}/{c['name']}"
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or ctx.get("runAsNonRoot")):
            errors.append(f"{where}: runAsNonRoot must be true")
        if (sc.get("runAsUser", ctx.get("runAsUser")) or 0) < 1:
            errors.append(f"{where}: needs a non-zero runAsUser")
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            errors.append(f"{where}: capabilities must drop ALL")
        if sc.get("capabilities", {}).get("add"):
            errors.append(f"{where}: no capability may be added")
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in resources.get(kind, {}):
                    errors.append(f"{where}: resources.{kind}.{res} missing")
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in c:
                errors.append(f"{where}: {probe} missing")


def http_path(container: dict[str, Any], probe: str) -> str | None:
    return container.get(probe, {}).get("httpGet", {}).get("path")


def check_gateway(
    docs: list[dict[str, Any]], deployment: dict[str, Any], errors: list[str]
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = [c for c in pod["containers"] if c["name"] == "pop3gw"]
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        if http_path(gateway, probe) != path:
            errors.append(f"pop3gw: {probe} must GET {path}")
    if [p.get("containerPort") for p in gateway.get("ports", [])] != [8080]:
        errors.append("pop3gw: must expose containerPort 8080 only")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmp = [m for m in gateway.get("volumeMounts", []) if m["mountPath"] == "/tmp"]  # noqa: S108
    if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
        errors.append("pop3gw: /tmp must be an emptyDir volume")
    env = container_env(docs, gateway)
    try:
        delay = float(env["POP3GW_SHUTDOWN_DELAY_SECONDS"])
        grace = float(env["POP3GW_SHUTDOWN_GRACE_SECONDS"])
    except KeyError as exc:
        errors.append(f"pop3gw: {exc.args[0]} must be set explicitly")
        return
    period = pod.get("terminationGracePeriodSeconds", 30)
    if period < delay + grace + SHUTDOWN_MARGIN_SECONDS:
        errors.append(
            f"pop3gw: terminationGracePeriodSeconds {period} < shutdown delay {delay:g} + "
            f"grace {grace:g} + {SHUTDOWN_MARGIN_SECONDS}"
        )


def port_set(rules: list[dict[str, Any]]) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for rule in rules for p in rule.get("ports", [])}


def check_network_policy(policy: dict[str, Any], errors: list[str]) -> None:
    spec = policy["spec"]
    if sorted(spec.get("policyTypes", [])) != ["Egress", "Ingress"]:
        errors.append("NetworkPolicy pop3gw: must govern both Ingress and Egress")
    if port_set(spec.get("ingress", [])) != {(8080, "TCP")}:
        errors.append("NetworkPolicy pop3gw: ingress must allow TCP 8080 only")
    for rule in spec.get("egress", []):
        if not rule.get("ports"):
            errors.append("NetworkPolicy pop3gw: an egress rule without ports allows everything")
    wanted = {(110, "TCP"), (995, "TCP"), (443, "TCP"), (6379, "TCP"), (53, "UDP"), (53, "TCP")}
    if port_set(spec.get("egress", [])) != wanted:
        errors.append(f"NetworkPolicy pop3gw: egress must allow exactly {sorted(wanted)}")


def configured_ports(docs: list[dict[str, Any]], env: dict[str, str]) -> dict[str, int]:
    """Where the gateway is configured to connect -> the TCP port: the default upstream,
    the config file's upstreams and mailboxes (from its ConfigMap), Redis."""
    from urllib.parse import urlsplit

    defaults = {"pop3": 110, "pop3+starttls": 110, "pop3s": 995, "redis": 6379, "rediss": 6379}
    urls = {}
    for name in ("POP3GW_DEFAULT_UPSTREAM", "POP3GW_REDIS_URL"):
        if env.get(name):
            urls[name] = env[name]
    config = env.get("POP3GW_CONFIG")
    if config:
        for cm in by_kind(docs, "ConfigMap").values():
            text = (cm.get("data") or {}).get(Path(config).name)
            if text is None:
                continue
            data = tomllib.loads(text)
            for i, up in enumerate(data.get("upstreams", [])):
                urls[f"{config}: upstreams.{i}.url"] = up["url"]
            for i, box in enumerate(data.get("mailboxes", [])):
                if "://" in box["upstream"]:
                    urls[f"{config}: mailboxes.{i}.upstream"] = box["upstream"]
    ports = {}
    for where, url in urls.items():
        parts = urlsplit(url.replace("REPLACE-WITH-", "x"))
        ports[where] = parts.port or defaults.get(parts.scheme.lower(), 0)
    return ports


def check_configured_ports(
    docs: list[dict[str, Any]], env: dict[str, str], policy: dict[str, Any], errors: list[str]
) -> None:
    allowed = {port for port, proto in port_set(policy["spec"].get("egress", [])) if proto == "TCP"}
    for where, port in configured_ports(docs, env).items():
        if port not in allowed:
            errors.append(f"NetworkPolicy pop3gw: egress does not allow TCP {port} ({where})")


def mounted(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volume that holds ``path`` in the container, if any."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return volumes.get(mount["name"])
    return None


def check_service_mode(
    docs: list[dict[str, Any]], deployment: dict[str, Any], errors: list[str]
) -> None:
    """Configured mailboxes and API keys: the config file from a ConfigMap, every mailbox
    password from a Secret file, the API keys and the cache secret from Secrets."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "pop3gw"]
    env = container_env(docs, container)
    refs = {
        item["name"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    for name in ("POP3GW_API_KEYS", "POP3GW_CACHE_SECRET", "POP3GW_REDIS_URL"):
        if name not in refs:
            errors.append(f"service-mode: {name} must come from a Secret")
    config = env.get("POP3GW_CONFIG")
    volume = mounted(pod, container, config) if config else None
    if volume is None or "configMap" not in volume:
        errors.append("service-mode: POP3GW_CONFIG must name a file of a ConfigMap volume")
        return
    text = (by_kind(docs, "ConfigMap")[volume["configMap"]["name"]].get("data") or {}).get(
        Path(config).name
    )
    if text is None:
        errors.append(f"service-mode: the ConfigMap holds no {Path(config).name}")
        return
    data = tomllib.loads(text)
    if not data.get("mailboxes"):
        errors.append("service-mode: the config file configures no mailbox")
    for box in data.get("mailboxes", []):
        secret_file = box.get("password_file") or box.get("token_file")
        holder = mounted(pod, container, secret_file) if secret_file else None
        if holder is None or "secret" not in holder:
            errors.append(f"service-mode: mailbox {box['id']}: its secret must be a Secret file")
    if data.get("api_keys"):
        errors.append("service-mode: API keys belong in the Secret (POP3GW_API_KEYS)")


def cmd_policy(overlay: str, rendered: str) -> int:
    docs = load(rendered)
    errors: list[str] = []
    deployments = by_kind(docs, "Deployment")
    for kind in (
        "Namespace",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    ):
        if not by_kind(docs, kind):
            errors.append(f"{overlay}: no {kind}")
    for name, deployment in deployments.items():
        check_pod(name, deployment["spec"]["template"]["spec"], errors)
    for secret in by_kind(docs, "Secret").values():
        if secret.get("data"):
            errors.append(f"Secret {secret['metadata']['name']}: use stringData placeholders")
        for key, value in secret.get("stringData", {}).items():
            if PLACEHOLDER not in value:
                errors.append(f"Secret {secret['metadata']['name']}: {key} is not a placeholder")
    gateway = deployments.get("pop3gw")
    if gateway is None:
        return problems_of([*errors, f"{overlay}: no Deployment pop3gw"])
    check_gateway(docs, gateway, errors)
    (container,) = [
        c for c in gateway["spec"]["template"]["spec"]["containers"] if c["name"] == "pop3gw"
    ]
    env = container_env(docs, container)
    policy = by_kind(docs, "NetworkPolicy").get("pop3gw")
    if policy:
        check_network_policy(policy, errors)
        check_configured_ports(docs, env, policy, errors)
    refs = {
        item["name"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    replicas = gateway["spec"].get("replicas")
    if overlay == "dev":
        if replicas != 1 or hpas:
            errors.append("dev: one replica and no autoscaler")
        if "POP3GW_REDIS_URL" in env:
            errors.append("dev: the in-process cache (no POP3GW_REDIS_URL)")
    elif overlay in ("prod", "service-mode"):
        if overlay == "service-mode":
            check_service_mode(docs, gateway, errors)
        if replicas != 3 or hpas.get("pop3gw", {}).get("spec", {}).get("minReplicas") != 3:
            errors.append("prod: three replicas, and an autoscaler that keeps at least three")
        for name in ("POP3GW_REDIS_URL", "POP3GW_CACHE_SECRET"):
            if name not in refs:
                errors.append(f"prod: {name} must come from a Secret")
        if "pop3gw-redis" not in deployments:
            errors.append("prod: no Redis Deployment")
    else:
        errors.append(f"unknown overlay {overlay!r}")
    return problems_of(errors)


# -- env, known-vars -------------------------------------------------------------------


def cmd_env(rendered: str) -> int:
    docs = load(rendered)
    deployment = by_kind(docs, "Deployment")["pop3gw"]
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "pop3gw"
    ]
    for name, value in sorted(container_env(docs, container).items()):
        if "\n" in value:
            print(f"{name}: a multi-line value cannot go in an env file", file=sys.stderr)
            return 1
        print(f"{name}={stand_in(value)}")
    return 0


def stand_in(value: str) -> str:
    """A placeholder replaced by a value of the right shape (64 hex digits: a password, a
    token, a SHA-256), so that check-config sees what an installation would hold."""
    return re.sub(PLACEHOLDER + r"[A-Z0-9-]*", "ab" * 32, value)


def cmd_files(rendered: str, out_dir: str) -> int:
    docs = load(rendered)
    deployment = by_kind(docs, "Deployment")["pop3gw"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "pop3gw"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    sources = {"configMap": by_kind(docs, "ConfigMap"), "secret": by_kind(docs, "Secret")}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        kind = "configMap" if "configMap" in volume else "secret" if "secret" in volume else None
        if kind is None:
            continue
        name = volume[kind]["name"] if kind == "configMap" else volume[kind]["secretName"]
        source = sources[kind][name]
        data = source.get("data") or source.get("stringData") or {}
        items = volume[kind].get("items") or [{"key": k, "path": k} for k in data]
        target = Path(out_dir) / mount["name"]
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o755)
        for item in items:
            path = target / item["path"]
            path.write_text(stand_in(data[item["key"]]))
            path.chmod(0o644)  # (in the pod: the volume's mode, the gateway's group)
        print(f"--volume={target}:{mount['mountPath']}:ro")
    return 0


def cmd_known_vars(envfile: str, config_json: str) -> int:
    known = set(json.loads(Path(config_json).read_text()))
    errors = []
    for line in Path(envfile).read_text().splitlines():
        name = line.partition("=")[0]
        if name.startswith("POP3GW_") and name != "POP3GW_CONFIG":  # (the file's name)
            top = name.removeprefix("POP3GW_").partition("__")[0].lower()
            if top not in known:
                errors.append(f"{name}: pop3gw has no setting {top!r}")
    return problems_of(errors)


# -- lock ------------------------------------------------------------------------------


def locked_versions(lock: str) -> Iterator[tuple[str, str, str]]:
    """(name, version, marker) of every pin in a requirements file with hashes."""
    text = Path(lock).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.*?))?\s*(?:--hash|$)", line)
        if not m:
            raise SystemExit(f"{lock}: cannot read {line[:60]!r}")
        yield m.group(1), m.group(2), m.group(3) or ""


def cmd_lock(pyproject: str, lock: str) -> int:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with open(pyproject, "rb") as f:
        declared = tomllib.load(f)["project"]["dependencies"]
    pins = {canonicalize_name(n): v for n, v, _ in locked_versions(lock)}
    errors = []
    for text in declared:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            errors.append(f"{lock}: {req.name} is not pinned (scripts/lock.sh)")
        elif not req.specifier.contains(version, prereleases=True):
            errors.append(
                f"{lock}: {req.name}=={version} is outside {req.specifier} (scripts/lock.sh)"
            )
    return problems_of(errors)


# -- mutate ----------------------------------------------------------------------------


def cmd_mutate(how: str, rendered: str, out: str) -> int:
    """Break a copy of the rendered manifests in one known way; print what was broken."""
    docs = load(rendered)
    for doc in docs:
        kind = doc.get("kind")
        if how == "misspell" and kind == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            pod["terminationGracePeriodSecnds"] = pod.pop("terminationGracePeriodSeconds")
            print("terminationGracePeriodSecnds")
            break
        if how == "no-apiversion" and kind == "PodDisruptionBudget":
            del doc["apiVersion"]
            print("apiVersion")
            break
        if how == "insecure" and kind == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["securityContext"]["readOnlyRootFilesystem"] = False
            container["securityContext"]["allowPrivilegeEscalation"] = True
            print("readOnlyRootFilesystem")
            break
        if how == "crd-misspell" and kind == "ServiceMonitor":
            endpoint = doc["spec"]["endpoints"][0]
            endpoint["intervall"] = endpoint.pop("interval")
            print("intervall")
            break
    else:
        print(f"mutate: nothing to break for {how!r} in {rendered}", file=sys.stderr)
        return 1
    with open(out, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    return 0


COMMANDS = {
    "crds": cmd_crds,
    "policy": cmd_policy,
    "env": cmd_env,
    "files": cmd_files,
    "known-vars": cmd_known_vars,
    "lock": cmd_lock,
    "mutate": cmd_mutate,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]))
