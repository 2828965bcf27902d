"""Checks the mailconnect Helm chart offline: strict lint, rendering with the default values and
with a production-like values file, schema validation of every rendered manifest with
kubernetes-validate --strict, and assertions on what the manifests say (gRPC probes, hardened
security context, secrets by reference, the migration hook, the NetworkPolicy's egress).

Run with the project venv: .venv-tools/bin/python helm/tests/check_chart.py
Exits non-zero when any check fails.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailconnect"
PRODUCTION = CHART / "ci" / "production-values.yaml"
KUBERNETES_VERSIONS = ["1.30.0", "1.33.0"]
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
MAIL_PORTS = {25, 465, 587, 2525, 143, 993, 443}

passed = 0
failed = 0


def check(name: str, condition: bool, detail: str = "") -> None:
    global passed, failed
    if condition:
        passed += 1
        print(f"ok    {name}")
    else:
        failed += 1
        print(f"FAIL  {name}{': ' + detail if detail else ''}")


def render(values: dict, *, upgrade: bool = False) -> dict[str, list[dict]]:
    """Rendered manifests by template file, NOTES.txt kept as text under "NOTES"."""
    chart = helm.Chart.load(str(CHART))
    out = chart.render(
        values,
        name="mc",
        namespace="crm",
        is_install=not upgrade,
        is_upgrade=upgrade,
    )
    manifests: dict[str, list[dict]] = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            manifests["NOTES"] = [{"text": text}]
            continue
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        if docs:
            manifests[Path(path).name] = docs
    return manifests


def by_kind(manifests: dict[str, list[dict]], kind: str) -> list[dict]:
    return [doc for docs in manifests.values() for doc in docs if doc.get("kind") == kind]


def one(manifests: dict[str, list[dict]], kind: str) -> dict:
    found = by_kind(manifests, kind)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, found {len(found)}")
    return found[0]


def validate_schemas(label: str, manifests: dict[str, list[dict]]) -> None:
    docs = [doc for name, docs in manifests.items() if name != "NOTES" for doc in docs]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for index, doc in enumerate(docs):
            path = Path(tmp) / f"{index:02d}-{doc['kind']}.yaml"
            path.write_text(yaml.safe_dump(doc))
            files.append(str(path))
        for version in KUBERNETES_VERSIONS:
            result = subprocess.run(
                [str(VALIDATE), "-k", version, "--strict", "--quiet", *files],
                capture_output=True,
                text=True,
            )
            check(
                f"{label}: {len(files)} manifests valid for Kubernetes {version} (strict)",
                result.returncode == 0,
                result.stdout + result.stderr,
            )


def check_hardened_pod(label: str, pod: dict) -> None:
    pod_context = pod.get("securityContext", {})
    check(f"{label}: pod runAsNonRoot", pod_context.get("runAsNonRoot") is True)
    check(
        f"{label}: pod seccomp RuntimeDefault",
        pod_context.get("seccompProfile", {}).get("type") == "RuntimeDefault",
    )
    check(
        f"{label}: no service account token mounted",
        pod.get("automountServiceAccountToken") is False,
    )
    for container in pod["containers"]:
        context = container.get("securityContext", {})
        name = f"{label}/{container['name']}"
        check(f"{name}: readOnlyRootFilesystem", context.get("readOnlyRootFilesystem") is True)
        check(f"{name}: runAsNonRoot", context.get("runAsNonRoot") is True)
        check(
            f"{name}: no privilege escalation", context.get("allowPrivilegeEscalation") is False
        )
        check(
            f"{name}: all capabilities dropped",
            context.get("capabilities", {}).get("drop") == ["ALL"]
            and not context.get("capabilities", {}).get("add"),
        )
        check(
            f"{name}: seccomp RuntimeDefault",
            context.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        )
        check(f"{name}: resources set", bool(container.get("resources", {}).get("requests")))


def secret_refs(container: dict) -> dict[str, dict]:
    return {
        env["name"]: env["valueFrom"]["secretKeyRef"]
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }


def check_release(label: str, values: dict, manifests: dict[str, list[dict]]) -> None:
    validate_schemas(label, manifests)
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    check_hardened_pod(f"{label} deployment", pod)

    # Probes: native gRPC on the health service, liveness apart from the database.
    liveness, readiness = server.get("livenessProbe", {}), server.get("readinessProbe", {})
    check(f"{label}: liveness probe is gRPC", "grpc" in liveness and "exec" not in liveness)
    check(f"{label}: readiness probe is gRPC", "grpc" in readiness)
    check(
        f"{label}: liveness asks the 'liveness' entry",
        liveness.get("grpc", {}).get("service") == "liveness",
    )
    check(
        f"{label}: readiness asks the overall status",
        readiness.get("grpc", {}).get("service") == "",
    )
    tls = values.get("tls", {}).get("enabled", False)
    expected_port = 50052 if tls else 50051
    check(
        f"{label}: probes reach a plaintext health port ({expected_port})",
        liveness["grpc"]["port"] == expected_port and readiness["grpc"]["port"] == expected_port,
    )

    # Shutdown: preStop sleep, then a grace period longer than sleep + drain.
    config = one(manifests, "ConfigMap")["data"]
    sleep = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    drain = int(config["MAILCONNECT_SHUTDOWN_GRACE"].rstrip("s"))
    check(f"{label}: preStop sleeps", isinstance(sleep, int) and sleep > 0)
    check(
        f"{label}: termination grace {pod.get('terminationGracePeriodSeconds')}s > "
        f"preStop {sleep}s + drain {drain}s",
        pod.get("terminationGracePeriodSeconds", 0) > (sleep or 0) + drain,
    )

    # Secrets: by reference only, never in the ConfigMap.
    refs = secret_refs(server)
    expected_secret = values.get("secrets", {}).get("existingSecret") or "mc-mailconnect"
    check(
        f"{label}: database URL from Secret {expected_secret}",
        refs.get("MAILCONNECT_DATABASE_URL", {}).get("name") == expected_secret,
    )
    check(
        f"{label}: encryption keys from the Secret",
        refs.get("MAILCONNECT_ENCRYPTION_KEYS", {}).get("name") == expected_secret,
    )
    shared = not values.get("jwt", {}).get("disableSharedSecret", False)
    check(
        f"{label}: JWT secret {'from the Secret' if shared else 'not configured'}",
        ("MAILCONNECT_JWT_SECRET" in refs) == shared,
    )
    plain_env = {env["name"] for env in server.get("env", []) if "value" in env}
    secret_names = {"MAILCONNECT_DATABASE_URL", "MAILCONNECT_JWT_SECRET", "MAILCONNECT_ENCRYPTION_KEYS"}
    check(
        f"{label}: no secret setting in the ConfigMap or as a plain value",
        not (secret_names & set(config)) and not (secret_names & plain_env),
        str(secret_names & (set(config) | plain_env)),
    )
    check(
        f"{label}: ConfigMap holds no credentials",
        not any("://" in str(v) and "@" in str(v) for v in config.values()),
    )
    secrets = by_kind(manifests, "Secret")
    if values.get("secrets", {}).get("existingSecret"):
        check(f"{label}: no Secret rendered with existingSecret", secrets == [])
    else:
        check(f"{label}: the chart's Secret is rendered", len(secrets) == 1)
        check(
            f"{label}: the chart's Secret exists before the migration hook",
            secrets[0]["metadata"]["annotations"].get("helm.sh/hook") == "pre-install,pre-upgrade"
            and int(secrets[0]["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0,
        )

    # Migrations: a hook Job running `mailconnect migrate` before install and upgrade.
    job = one(manifests, "Job")
    annotations = job["metadata"].get("annotations", {})
    check(
        f"{label}: migration Job is a pre-install,pre-upgrade hook",
        annotations.get("helm.sh/hook") == "pre-install,pre-upgrade",
    )
    job_pod = job["spec"]["template"]["spec"]
    check(f"{label}: migration Job runs migrate", job_pod["containers"][0].get("args") == ["migrate"])
    check(
        f"{label}: migration Job reads the database URL from the Secret",
        secret_refs(job_pod["containers"][0]).get("MAILCONNECT_DATABASE_URL", {}).get("name")
        == expected_secret,
    )
    check_hardened_pod(f"{label} migration job", job_pod)
    check(
        f"{label}: pods wait for the Job's migrations",
        config.get("MAILCONNECT_MIGRATE_ON_START") == "false",
    )

    # Service.
    service = one(manifests, "Service")
    port = service["spec"]["ports"][0]
    check(
        f"{label}: Service port named grpc with appProtocol",
        port.get("name") == "grpc" and port.get("appProtocol") == "grpc",
    )

    # Scaling and disruption.
    hpa = one(manifests, "HorizontalPodAutoscaler")
    check(
        f"{label}: HPA targets the Deployment",
        hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"],
    )
    check(f"{label}: no fixed replicas under the HPA", "replicas" not in deployment["spec"])
    check(f"{label}: PodDisruptionBudget", len(by_kind(manifests, "PodDisruptionBudget")) == 1)
    check(f"{label}: ServiceAccount", len(by_kind(manifests, "ServiceAccount")) == 1)

    # NetworkPolicy: ingress to gRPC; egress only DNS, Postgres, mail ports and the collector.
    policy = one(manifests, "NetworkPolicy")["spec"]
    check(
        f"{label}: NetworkPolicy covers ingress and egress",
        set(policy["policyTypes"]) == {"Ingress", "Egress"},
    )
    check(
        f"{label}: ingress to the grpc port",
        any(p.get("port") == "grpc" for rule in policy["ingress"] for p in rule["ports"]),
    )
    egress_ports = {
        (p["port"], p.get("protocol", "TCP")) for rule in policy["egress"] for p in rule["ports"]
    }
    expected = {(53, "UDP"), (53, "TCP"), (5432, "TCP")} | {(p, "TCP") for p in MAIL_PORTS}
    otlp = values.get("telemetry", {}).get("otlpEndpoint")
    if otlp:
        expected.add((4317, "TCP"))
    check(
        f"{label}: egress ports are exactly DNS, Postgres, mail{', OTLP' if otlp else ''}",
        egress_ports == expected,
        f"{sorted(egress_ports)} != {sorted(expected)}",
    )
    check(
        f"{label}: every egress rule names its ports",
        all(rule.get("ports") for rule in policy["egress"]),
    )
    notes = manifests["NOTES"][0]["text"]
    check(
        f"{label}: NOTES show port-forward and grpcurl",
        "port-forward" in notes and "grpcurl" in notes,
    )


def expect_render_error(label: str, values: dict, message: str) -> None:
    try:
        render(values)
    except helm.HelmError as error:
        check(label, message in str(error), str(error))
    else:
        check(label, False, "rendered without error")


def main() -> int:
    lint = helm.lint(str(CHART), strict=True)
    check("lint --strict (defaults): no errors", not lint["errors"], str(lint))
    production = yaml.safe_load(PRODUCTION.read_text())
    lint = helm.lint(str(CHART), production, strict=True)
    check("lint --strict (production values): no errors", not lint["errors"], str(lint))

    defaults = render({})
    check_release("defaults", {}, defaults)
    check_release("production", production, render(production))
    check(
        "defaults: the pool size is the server's own (twice the container's CPUs)",
        "MAILCONNECT_DB_MAX_CONNECTIONS" not in one(defaults, "ConfigMap")["data"],
    )
    upgrade = render(production, upgrade=True)
    check(
        "production upgrade renders the migration hook too",
        len(by_kind(upgrade, "Job")) == 1,
    )

    prod_manifests = render(production)
    pod = one(prod_manifests, "Deployment")["spec"]["template"]["spec"]
    config = one(prod_manifests, "ConfigMap")["data"]
    check(
        "production: mutual TLS files mounted and configured",
        config.get("MAILCONNECT_TLS_CLIENT_CA") == "/etc/mailconnect/tls/ca.crt"
        and any(v["name"] == "tls" and v["secret"]["secretName"] == "mailconnect-tls" for v in pod["volumes"]),
    )
    check(
        "production: the pool size it sets",
        config.get("MAILCONNECT_DB_MAX_CONNECTIONS") == "32",
    )
    check(
        "production: OTLP endpoint configured",
        config.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.observability.svc:4317",
    )
    check(
        "production: JWT public keys mounted",
        config.get("MAILCONNECT_JWT_PUBLIC_KEYS") == "/etc/mailconnect/jwt/idp-rs256.pem",
    )

    expect_render_error(
        "schema refuses an unknown log format",
        {"config": {"logFormat": "xml"}},
        "logFormat",
    )
    expect_render_error(
        "schema refuses a misspelt top-level key",
        {"replicas": 3},
        "replicas",
    )
    expect_render_error(
        "a database URL (or existingSecret) is required",
        {"secrets": {"databaseUrl": ""}},
        "secrets.databaseUrl",
    )
    expect_render_error(
        "TLS needs a Secret name",
        {"tls": {"enabled": True}},
        "tls.secretName",
    )

    print(f"\n{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
