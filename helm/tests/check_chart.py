"""Checks the mailconnect Helm chart offline: strict lint, rendering with the default values and
with a production-like values file, schema validation of every rendered manifest with
kubernetes-validate --strict, and assertions on what the manifests say (gRPC probes, hardened
security context, secrets by reference, the migration hook, the NetworkPolicy's egress), with one
group per defect of issue 17 ("defect N: ...") and per convention ("convention: ...").

Run with the project venv: .venv-tools/bin/python helm/tests/check_chart.py
`--chart DIR` checks another copy of the chart (e.g. an older one, to see which checks it fails).
Exits non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailconnect"
README = ROOT / "README.md"
KUBERNETES_VERSIONS = ["1.30.0", "1.33.0"]
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
MAIL_PORTS = {25, 465, 587, 2525, 143, 993, 443}
# Settings that only ever come from the Secret.
SECRET_SETTINGS = {
    "MAILCONNECT_DATABASE_URL",
    "MAILCONNECT_JWT_SECRET",
    "MAILCONNECT_ENCRYPTION_KEYS",
    "MAILCONNECT_SMTP_RELAY_URL",
    "MAILCONNECT_GOOGLE_OAUTH_CLIENT_SECRET",
    "MAILCONNECT_MICROSOFT_OAUTH_CLIENT_SECRET",
}
# The optional Secret entries of issue 14: field in secrets / secrets.keys -> (variable, the
# entry's name in the chart's own Secret).
OPTIONAL_SECRETS = {
    "smtpRelayUrl": ("MAILCONNECT_SMTP_RELAY_URL", "smtp-relay-url"),
    "googleOAuthClientSecret": ("MAILCONNECT_GOOGLE_OAUTH_CLIENT_SECRET", "google-oauth-client-secret"),
    "microsoftOAuthClientSecret": ("MAILCONNECT_MICROSOFT_OAUTH_CLIENT_SECRET", "microsoft-oauth-client-secret"),
}
DEFAULT_TOKEN_URLS = {
    "google": "https://oauth2.googleapis.com/token",
    "microsoft": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
}

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


def render(
    values: dict, *, upgrade: bool = False, name: str = "mc", chart: Path | None = None
) -> dict[str, list[dict]]:
    """Rendered manifests by template file, NOTES.txt kept as text under "NOTES"."""
    out = helm.Chart.load(str(chart or CHART)).render(
        values,
        name=name,
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


@contextlib.contextmanager
def group(name: str):
    """Checks that belong together: an exception inside (a manifest without the field looked at,
    a render error) fails the group instead of stopping the whole run."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - any error is this group's failure
        check(f"{name}: ran to the end", False, f"{type(error).__name__}: {error}")


def by_kind(manifests: dict[str, list[dict]], kind: str) -> list[dict]:
    return [doc for docs in manifests.values() for doc in docs if doc.get("kind") == kind]


def one(manifests: dict[str, list[dict]], kind: str, name: str | None = None) -> dict:
    found = [
        doc
        for doc in by_kind(manifests, kind)
        if name is None or doc["metadata"]["name"] == name
    ]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def hook_pods(manifests: dict[str, list[dict]]) -> dict[str, dict]:
    """The migration Job's pod template and the helm test pod, by what they are."""
    pods = {}
    for job in by_kind(manifests, "Job"):
        pods["migration Job pod"] = job["spec"]["template"]
    for pod in by_kind(manifests, "Pod"):
        pods["helm test pod"] = pod
    return pods


def server_selectors(manifests: dict[str, list[dict]]) -> dict[str, dict]:
    """Every label selector that picks the server's pods: the Services, the PodDisruptionBudget,
    the NetworkPolicy, the Deployment's (which the HorizontalPodAutoscaler uses) and the
    topology spread constraints."""
    selectors = {}
    for service in by_kind(manifests, "Service"):
        selectors[f"Service {service['metadata']['name']}"] = service["spec"]["selector"]
    for pdb in by_kind(manifests, "PodDisruptionBudget"):
        selectors["PodDisruptionBudget"] = pdb["spec"]["selector"]["matchLabels"]
    policy = one(manifests, "NetworkPolicy", server_name(manifests))
    selectors["NetworkPolicy"] = policy["spec"]["podSelector"]["matchLabels"]
    deployment = one(manifests, "Deployment")
    selectors["Deployment/HPA"] = deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]["spec"]
    for index, spread in enumerate(pod.get("topologySpreadConstraints", [])):
        selectors[f"topology spread {index}"] = spread["labelSelector"]["matchLabels"]
    return selectors


def server_name(manifests: dict[str, list[dict]]) -> str:
    return one(manifests, "Deployment")["metadata"]["name"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def millis(duration: str) -> float:
    """A duration as the chart's schema allows it (30s, 5m, 1h30m, 500ms) in milliseconds."""
    units = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6, "d": 8.64e7}
    parts = re.findall(r"([0-9]+)(ns|us|ms|s|m|h|d)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(number) * units[unit] for number, unit in parts)


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


def optional_secret_configured(values: dict, field: str) -> bool:
    """Whether values configure an optional Secret entry (relay URL, OAuth client secret): named
    in secrets.keys with an existing Secret, given a value without one."""
    secrets = values.get("secrets", {})
    if secrets.get("existingSecret"):
        return bool(secrets.get("keys", {}).get(field))
    return bool(secrets.get(field))


def token_ports(values: dict) -> set[int]:
    """Ports of the configured OAuth clients' token endpoints."""
    ports = set()
    for provider, default in DEFAULT_TOKEN_URLS.items():
        client = values.get("oauth", {}).get(provider, {})
        if client.get("clientId"):
            url = urllib.parse.urlsplit(client.get("tokenUrl") or default)
            ports.add(url.port or (80 if url.scheme == "http" else 443))
    return ports


def check_release(label: str, values: dict, manifests: dict[str, list[dict]]) -> None:
    """What every release must be, whatever its values."""
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

    # Shutdown: preStop sleep, then a grace period longer than sleep + drain, and a drain at least
    # as long as the longest call (defect 6).
    config = one(manifests, "ConfigMap")["data"]
    sleep = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = int(config["MAILCONNECT_SHUTDOWN_GRACE"].rstrip("s"))
    check(f"{label}: preStop sleeps", isinstance(sleep, int) and sleep > 0)
    check(
        f"{label}: termination grace {pod.get('terminationGracePeriodSeconds')}s > "
        f"preStop {sleep}s + drain {drain}s",
        pod.get("terminationGracePeriodSeconds", 0) > sleep + drain,
    )
    check(
        f"defect 6, {label}: drain {drain}s >= request timeout "
        f"{config['MAILCONNECT_REQUEST_TIMEOUT']}",
        drain * 1000 >= millis(config["MAILCONNECT_REQUEST_TIMEOUT"]),
    )

    # Secrets: by reference only, never in the ConfigMap.
    refs = secret_refs(server)
    expected_secret = values.get("secrets", {}).get("existingSecret") or "mc-mailconnect-chart-secret"
    check(
        f"{label}: database URL from Secret {expected_secret}",
        refs.get("MAILCONNECT_DATABASE_URL", {}).get("name") == expected_secret,
    )
    shared = not values.get("jwt", {}).get("disableSharedSecret", False)
    check(
        f"{label}: JWT secret {'from the Secret' if shared else 'not configured'}",
        ("MAILCONNECT_JWT_SECRET" in refs) == shared,
    )
    plain_env = {env["name"] for env in server.get("env", []) if "value" in env}
    check(
        f"{label}: no secret setting in the ConfigMap or as a plain value",
        not (SECRET_SETTINGS & set(config)) and not (SECRET_SETTINGS & plain_env),
        str(SECRET_SETTINGS & (set(config) | plain_env)),
    )
    optional_refs = {name: ref for name, ref in refs.items() if ref.get("optional")}
    check(f"{label}: no Secret reference is optional", optional_refs == {}, str(optional_refs))
    expected_optional = {
        env for field, (env, _) in OPTIONAL_SECRETS.items() if optional_secret_configured(values, field)
    }
    check(
        f"{label}: relay and OAuth client secrets from the Secret exactly when configured "
        f"({sorted(expected_optional)})",
        {env for env, _ in OPTIONAL_SECRETS.values()} & set(refs) == expected_optional
        and all(refs[env]["name"] == expected_secret for env in expected_optional),
        str(sorted(refs)),
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
    service = one(manifests, "Service", server_name(manifests))
    port = service["spec"]["ports"][0]
    check(f"{label}: Service port named grpc", port.get("name") == "grpc")

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
    policy = one(manifests, "NetworkPolicy", server_name(manifests))["spec"]
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
    relay = optional_secret_configured(values, "smtpRelayUrl")
    if relay:
        expected.add((values.get("networkPolicy", {}).get("egress", {}).get("relayPort", 587), "TCP"))
    expected |= {(port, "TCP") for port in token_ports(values)}
    check(
        f"{label}: egress ports are exactly DNS, Postgres, mail{', OTLP' if otlp else ''}"
        f"{', relay' if relay else ''}{', OAuth token endpoints' if token_ports(values) else ''}",
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

    # Per defect of issue 17, for every release.
    with group(f"defect 2, {label}"):
        for pod_name, hook_pod in hook_pods(manifests).items():
            labels = hook_pod["metadata"]["labels"]
            for selector_name, selector in server_selectors(manifests).items():
                check(
                    f"defect 2, {label}: the {pod_name} is not selected by the {selector_name}",
                    not selects(selector, labels),
                    f"{selector} matches {labels}",
                )
        check(
            f"defect 2, {label}: the server pods are selected by all of them",
            all(
                selects(selector, deployment["spec"]["template"]["metadata"]["labels"])
                for selector in server_selectors(manifests).values()
            ),
        )
    with group(f"defect 9, {label}"):
        pdb = one(manifests, "PodDisruptionBudget")
        check(
            f"defect 9, {label}: PodDisruptionBudget evicts unhealthy pods (AlwaysAllow)",
            pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow",
        )
    with group(f"defect 10, {label}"):
        check(
            f"defect 10, {label}: migration deadline {job['spec']['activeDeadlineSeconds']}s "
            "< Helm's default 5m timeout",
            job["spec"]["activeDeadlineSeconds"] < 300,
        )
    with group(f"defect 12, {label}"):
        mail_rule = next(
            rule for rule in policy["egress"] if any(p["port"] == 993 for p in rule["ports"])
        )
        cidrs = {peer["ipBlock"]["cidr"] for peer in mail_rule.get("to", []) if "ipBlock" in peer}
        check(
            f"defect 12, {label}: mail egress reaches public IPv4 and IPv6",
            {"0.0.0.0/0", "::/0"} <= cidrs,
            str(cidrs),
        )
        v6 = next(p["ipBlock"] for p in mail_rule["to"] if p.get("ipBlock", {}).get("cidr") == "::/0")
        check(
            f"defect 12, {label}: IPv6 mail egress leaves out private and link-local ranges",
            {"fc00::/7", "fe80::/10"} <= set(v6.get("except", [])),
        )
        open_rules = [
            rule
            for rule in policy["ingress"]
            if any(p.get("port") in ("health", 50052) for p in rule["ports"]) and not rule.get("from")
        ]
        check(
            f"defect 12, {label}: the health-only port is not open to every pod",
            open_rules == [],
            str(open_rules),
        )
        app_protocol = port.get("appProtocol")
        check(
            f"defect 12, {label}: Service appProtocol {app_protocol!r} fits "
            f"{'TLS' if tls else 'cleartext gRPC'}",
            app_protocol == ("tls" if tls else "grpc"),
        )
        keys_ref = refs.get("MAILCONNECT_ENCRYPTION_KEYS")
        has_keys = bool(
            values.get("secrets", {}).get("existingSecret")
            or values.get("secrets", {}).get("encryptionKeys")
        )
        check(
            f"defect 12, {label}: encryption keys "
            f"{'required from the Secret' if has_keys else 'not configured (none given)'}",
            (keys_ref is not None and keys_ref.get("name") == expected_secret and not keys_ref.get("optional"))
            if has_keys
            else keys_ref is None,
            str(keys_ref),
        )


def expect_render_error(label: str, values: dict, message: str, chart: Path | None = None) -> None:
    try:
        render(values, chart=chart)
    except helm.HelmError as error:
        check(label, message in str(error), str(error))
    else:
        check(label, False, "rendered without error")


def chart_with_template(tmp: Path, text: str) -> Path:
    """A copy of the chart with one more template: how the checks call the chart's helpers with
    cluster objects that offline rendering cannot look up."""
    copy = tmp / f"chart-{len(list(tmp.iterdir()))}"
    shutil.copytree(CHART, copy)
    (copy / "templates" / "zz-check.yaml").write_text(text)
    return copy


def secret_object(labels: dict, annotations: dict | None = None, jwt: str | None = None) -> str:
    """A Secret as `lookup` returns it, as a Go template raw string for fromJson."""
    import base64
    import json

    data = {"jwt-secret": base64.b64encode(jwt.encode()).decode()} if jwt else {}
    secret = {
        "metadata": {"name": "mc-mailconnect-chart-secret", "labels": labels,
                     "annotations": annotations or {}},
        "data": data,
    }
    return "`" + json.dumps(secret) + "`"


def check_defect_1(tmp: Path) -> None:
    """The chart's Secret has a name of its own and refuses to replace a Secret it did not make."""
    with group("defect 1"):
        readme_release = render({}, name="mailconnect")
        names = [doc["metadata"]["name"] for doc in by_kind(readme_release, "Secret")]
        check(
            "defect 1: release mailconnect's own Secret is not the README's hand-made "
            f"Secret mailconnect ({names})",
            "mailconnect" not in names and len(names) == 1,
        )
        secret = by_kind(readme_release, "Secret")[0]
        check(
            "defect 1: the chart's Secret carries the mark of its maker",
            secret["metadata"]["labels"].get("app.kubernetes.io/component") == "chart-secret"
            and secret["metadata"]["labels"].get("app.kubernetes.io/instance") == "mailconnect",
        )
        template = (CHART / "templates" / "secret.yaml").read_text()
        check(
            "defect 1: secret.yaml checks the Secret it looks up under its own name",
            re.search(r'\$existing := lookup "v1" "Secret" \.Release\.Namespace \$name', template)
            is not None
            and 'include "mailconnect.chartSecretCheckOwner" (dict "ctx" . "existing" $existing)'
            in template,
        )
    own = {"app.kubernetes.io/instance": "mc", "app.kubernetes.io/component": "chart-secret"}
    for case, labels in [
        ("a hand-made Secret (no labels)", {}),
        ("another release's Secret", {**own, "app.kubernetes.io/instance": "other"}),
        ("a Secret of this release without the chart's mark", {"app.kubernetes.io/instance": "mc"}),
    ]:
        with group(f"defect 1: {case}"):
            chart = chart_with_template(
                tmp,
                '{{- include "mailconnect.chartSecretCheckOwner" '
                f'(dict "ctx" . "existing" (fromJson {secret_object(labels)})) }}}}\n',
            )
            expect_render_error(
                f"defect 1: refuses to replace {case}", {}, "this release's chart did not create it", chart
            )
    jwt_cases = [
        ("keeps the JWT secret of its own Secret", {}, secret_object(own, jwt="kept"), "`{}`", "kept"),
        ("a JWT secret in values wins", {"secrets": {"jwtSecret": "given-" + "g" * 32}},
         secret_object(own, jwt="kept"), "`{}`", "given-" + "g" * 32),
        ("keeps the JWT secret chart 0.1 made for this release",
         {}, "`{}`",
         secret_object({"app.kubernetes.io/instance": "mc", "helm.sh/chart": "mailconnect-0.1.0"},
                       {"helm.sh/hook": "pre-install,pre-upgrade"}, jwt="legacy"), "legacy"),
    ]
    for case, values, existing, legacy, expected in jwt_cases:
        with group(f"defect 1: {case}"):
            chart = chart_with_template(
                tmp,
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: zz-check\ndata:\n"
                '  jwt: {{ include "mailconnect.chartSecretCheckOwner" '
                f'(dict "ctx" . "existing" (fromJson {existing})) }}}}'
                '{{ include "mailconnect.chartSecretJwt" '
                f'(dict "ctx" . "existing" (fromJson {existing}) "legacy" (fromJson {legacy})) | quote }}}}\n',
            )
            data = one(render(values, chart=chart), "ConfigMap", "zz-check")["data"]
            check(f"defect 1: {case}", data["jwt"] == expected, data["jwt"])
    with group("defect 1: a hand-made Secret named like chart 0.1's is never read"):
        hand_made = secret_object({"team": "crm"}, jwt="hand-made")
        chart = chart_with_template(
            tmp,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: zz-check\ndata:\n"
            '  jwt: {{ include "mailconnect.chartSecretJwt" '
            f'(dict "ctx" . "existing" (dict) "legacy" (fromJson {hand_made})) | quote }}}}\n',
        )
        jwt = one(render({}, chart=chart), "ConfigMap", "zz-check")["data"]["jwt"]
        check(
            "defect 1: a hand-made Secret named like chart 0.1's is never read",
            jwt != "hand-made" and len(jwt) == 48,
            jwt,
        )


def pod_annotations(manifests: dict[str, list[dict]]) -> dict:
    return one(manifests, "Deployment")["spec"]["template"]["metadata"].get("annotations", {})


def check_defect_3() -> None:
    with group("defect 3"):
        first, second = pod_annotations(render({})), pod_annotations(render({}))
        check("defect 3: pods carry checksum/secret", "checksum/secret" in first)
        check(
            "defect 3: a generated JWT secret does not change checksum/secret from one render to "
            "the next (helm template, GitOps)",
            first.get("checksum/secret") == second.get("checksum/secret"),
        )
        for name, values in [
            ("database URL", {"secrets": {"databaseUrl": "postgres://other@db:5432/mc"}}),
            ("JWT secret", {"secrets": {"jwtSecret": "a-secret-of-my-own-at-least-32-bytes"}}),
            ("encryption keys", {"secrets": {"encryptionKeys": "k1:AAAA"}}),
        ]:
            changed = pod_annotations(render(values))
            check(
                f"defect 3: a new {name} rolls the pods (checksum/secret changes)",
                changed.get("checksum/secret") not in (None, first.get("checksum/secret")),
            )
        existing = pod_annotations(render({"secrets": {"existingSecret": "mailconnect"}}))
        check("defect 3: checksum/secret with an existing Secret too", "checksum/secret" in existing)
        notes = render({})["NOTES"][0]["text"]
        check(
            "defect 3: NOTES warn that a generated JWT secret does not survive GitOps renders",
            "existingSecret" in notes and "GitOps" in notes,
        )
        notes = render({"secrets": {"existingSecret": "mailconnect"}})["NOTES"][0]["text"]
        check("defect 3: no such warning with an existing Secret", "GitOps" not in notes)


def check_defect_4() -> None:
    with group("defect 4"):
        # Values that chart 0.1 took too, so running this against it shows the 1e+06.
        big = {
            "config": {
                "maxConcurrentCalls": 1000000,
                "maxConcurrentCallsPerConnection": 2000000,
                "maxRecvMessageSize": 16000000,
                "maxSendMessageSize": 16000000,
                "shutdownGraceSeconds": 1000000,
                "extra": {"MAILCONNECT_CACHE_ENTRIES": 1000000, "MAILCONNECT_PROBE_RATE_PER_MINUTE": 25000000},
            },
            "migrations": {"activeDeadlineSeconds": 1000000},
            "lifecycle": {"preStopSleepSeconds": 1000000},
        }
        manifests = render(big)
        config = one(manifests, "ConfigMap")["data"]
        expected = {
            "MAILCONNECT_MAX_CONCURRENT_CALLS": "1000000",
            "MAILCONNECT_MAX_CONCURRENT_CALLS_PER_CONNECTION": "2000000",
            "MAILCONNECT_MAX_RECV_MESSAGE_SIZE": "16000000",
            "MAILCONNECT_SHUTDOWN_GRACE": "1000000s",
            "MAILCONNECT_CACHE_ENTRIES": "1000000",
            "MAILCONNECT_PROBE_RATE_PER_MINUTE": "25000000",
        }
        for key, value in expected.items():
            check(f"defect 4: {key} renders as {value}", config.get(key) == value, str(config.get(key)))
        text = yaml.safe_dump_all([doc for name, docs in manifests.items() if name != "NOTES" for doc in docs])
        check("defect 4: no number anywhere renders as 1e+06", "e+0" not in text)
        pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
        check(
            "defect 4: terminationGracePeriodSeconds and the preStop sleep as integers",
            pod["terminationGracePeriodSeconds"] == 2000010
            and pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] == 1000000,
        )
        check(
            "defect 4: the Job's deadline as an integer",
            one(manifests, "Job")["spec"]["activeDeadlineSeconds"] == 1000000,
        )
        pool = render({"config": {"dbMaxConnections": 1000000}, "database": {"maxConnections": 0}})
        check(
            "defect 4: MAILCONNECT_DB_MAX_CONNECTIONS renders as 1000000",
            one(pool, "ConfigMap")["data"].get("MAILCONNECT_DB_MAX_CONNECTIONS") == "1000000",
        )
        expect_render_error(
            "defect 4: a fraction in config.extra is refused (quote it)",
            {"config": {"extra": {"MAILCONNECT_X": 1.5}}},
            "MAILCONNECT_X",
        )


def check_defect_5() -> None:
    with group("defect 5"):
        manifests = render({"lifecycle": {"preStopSleepSeconds": 0}})
        validate_schemas("defect 5: preStopSleepSeconds 0", manifests)
        pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
        check(
            "defect 5: preStopSleepSeconds 0 leaves preStop out (Kubernetes 1.30-1.32 refuse a zero sleep)",
            "preStop" not in pod["containers"][0].get("lifecycle", {}),
        )
        check(
            "defect 5: the termination grace still covers the drain",
            pod["terminationGracePeriodSeconds"] == 30 + 10,
        )


def check_defect_6() -> None:
    with group("defect 6"):
        expect_render_error(
            "defect 6: a drain shorter than the request timeout is refused",
            {"config": {"shutdownGraceSeconds": 20, "requestTimeout": "30s"}},
            "config.shutdownGraceSeconds (20s) must be at least config.requestTimeout (30s)",
        )
        expect_render_error(
            "defect 6: compound durations are compared too (1m30s > 60s)",
            {"config": {"shutdownGraceSeconds": 60, "requestTimeout": "1m30s", "maxConnectionAgeGrace": "2m"}},
            "config.shutdownGraceSeconds (60s)",
        )
        render({"config": {"shutdownGraceSeconds": 20, "requestTimeout": "20s"}})
        check("defect 6: a drain as long as the request timeout is accepted", True)


def check_defect_7() -> None:
    with group("defect 7"):
        manifests = render({})
        config = one(manifests, "ConfigMap")["data"]
        age = millis(config["MAILCONNECT_MAX_CONNECTION_AGE"])
        check(
            f"defect 7: connections age out within minutes ({config['MAILCONNECT_MAX_CONNECTION_AGE']})",
            60_000 <= age <= 600_000,
        )
        grace = config.get("MAILCONNECT_MAX_CONNECTION_AGE_GRACE")
        check(
            f"defect 7: a connection age grace ({grace}) at least the request timeout",
            grace is not None and millis(grace) >= millis(config["MAILCONNECT_REQUEST_TIMEOUT"]),
        )
        headless = one(manifests, "Service", "mc-mailconnect-headless")
        service = one(manifests, "Service", "mc-mailconnect")
        check(
            "defect 7: a headless Service over the same pods and port",
            headless["spec"].get("clusterIP") == "None"
            and headless["spec"]["selector"] == service["spec"]["selector"]
            and headless["spec"]["ports"][0]["targetPort"] == "grpc",
        )
        check(
            "defect 7: the headless Service can be turned off",
            len(by_kind(render({"service": {"headless": {"enabled": False}}}), "Service")) == 1,
        )
        expect_render_error(
            "defect 7: a connection age grace shorter than the request timeout is refused",
            {"config": {"maxConnectionAgeGrace": "10s"}},
            "config.maxConnectionAgeGrace (10s) must be at least config.requestTimeout (30s)",
        )


def peak_connections(manifests: dict[str, list[dict]]) -> tuple[int, int]:
    """(peak connections the release opens, its pool size): (max pods + 25% surge) × pool + 1."""
    config = one(manifests, "ConfigMap")["data"]
    pool = int(config["MAILCONNECT_DB_MAX_CONNECTIONS"])
    hpa = by_kind(manifests, "HorizontalPodAutoscaler")
    pods = hpa[0]["spec"]["maxReplicas"] if hpa else one(manifests, "Deployment")["spec"]["replicas"]
    return (pods + -(-pods // 4)) * pool + 1, pool


def check_defect_8(production: dict) -> None:
    with group("defect 8"):
        for label, values in [("defaults", {}), ("production", production)]:
            peak, pool = peak_connections(render(values))
            budget = values.get("database", {}).get("maxConnections", 100)
            check(
                f"defect 8, {label}: pool {pool} set by the chart; peak {peak} connections "
                f"<= database.maxConnections {budget}",
                peak <= budget,
            )
        expect_render_error(
            "defect 8: 10 replicas (+ surge) × a pool of 32 against Postgres' default 100 is refused",
            {"config": {"dbMaxConnections": 32}},
            "more than database.maxConnections 100",
        )
        expect_render_error(
            "defect 8: fixed replicas count too",
            {"autoscaling": {"enabled": False}, "replicaCount": 30},
            "38 pods at most",
        )
        render({"config": {"dbMaxConnections": 32}, "database": {"maxConnections": 0}})
        check("defect 8: database.maxConnections 0 turns the check off", True)


def check_defect_10(tmp: Path) -> None:
    with group("defect 10"):
        values = {
            "migrations": {
                "nodeSelector": {"pool": "batch"},
                "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
                "priorityClassName": "batch-low",
                "podAnnotations": {"sidecar.istio.io/inject": "false"},
                "podLabels": {"team": "crm"},
                "serviceAccount": {"create": True, "annotations": {
                    "iam.gke.io/gcp-service-account": "mc@project.iam.gserviceaccount.com"}},
            }
        }
        manifests = render(values)
        validate_schemas("defect 10: migration Job options", manifests)
        job = one(manifests, "Job")
        pod = job["spec"]["template"]
        spec = pod["spec"]
        migrations = values["migrations"]
        check("defect 10: Job nodeSelector", spec.get("nodeSelector") == migrations["nodeSelector"])
        check("defect 10: Job tolerations", spec.get("tolerations") == migrations["tolerations"])
        check("defect 10: Job affinity", spec.get("affinity") == migrations["affinity"])
        check("defect 10: Job priorityClassName", spec.get("priorityClassName") == "batch-low")
        check(
            "defect 10: Job pod annotations (a mesh sidecar kept out)",
            pod["metadata"].get("annotations") == migrations["podAnnotations"],
        )
        check("defect 10: Job pod labels", pod["metadata"]["labels"].get("team") == "crm")
        accounts = {sa["metadata"]["name"]: sa for sa in by_kind(manifests, "ServiceAccount")}
        account = accounts.get("mc-mailconnect-migrate", {})
        check(
            "defect 10: the Job runs as a ServiceAccount of its own, with its annotations",
            spec.get("serviceAccountName") == "mc-mailconnect-migrate"
            and account.get("metadata", {}).get("annotations", {}).get("iam.gke.io/gcp-service-account")
            == "mc@project.iam.gserviceaccount.com",
        )
        annotations = account.get("metadata", {}).get("annotations", {})
        check(
            "defect 10: that ServiceAccount is a hook created before the Job",
            annotations.get("helm.sh/hook") == "pre-install,pre-upgrade"
            and int(annotations.get("helm.sh/hook-weight", "0")) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"]),
        )
        inherited = one(render({"nodeSelector": {"pool": "mail"}, "tolerations": [
            {"key": "mail", "operator": "Exists"}], "priorityClassName": "high"}), "Job")["spec"]["template"]["spec"]
        check(
            "defect 10: unset, the Job follows the server's nodeSelector, tolerations, priorityClassName",
            inherited.get("nodeSelector") == {"pool": "mail"}
            and inherited.get("tolerations") == [{"key": "mail", "operator": "Exists"}]
            and inherited.get("priorityClassName") == "high",
        )
        existing = one(render({"migrations": {"serviceAccount": {"name": "db-migrator"}}}), "Job")
        check(
            "defect 10: or an existing ServiceAccount",
            existing["spec"]["template"]["spec"].get("serviceAccountName") == "db-migrator",
        )


def check_defect_11() -> None:
    with group("defect 11"):
        values = {
            "tls": {"enabled": True, "secretName": "mc-tls", "mutual": True,
                    "clientCa": {"secretName": "mc-client-ca"}},
            "tests": {"tls": {"clientSecretName": "mc-test-client"}},
        }
        manifests = render(values)
        validate_schemas("defect 11: mutual TLS", manifests)
        config = one(manifests, "ConfigMap")["data"]
        pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["name"]: mount for mount in pod["containers"][0]["volumeMounts"]}
        ca = config.get("MAILCONNECT_TLS_CLIENT_CA", "")
        ca_volume = next(
            (name for name, mount in mounts.items() if ca.startswith(mount["mountPath"] + "/")), None
        )
        check(
            f"defect 11: the client CA ({ca}) comes from a Secret of its own, not the serving certificate's",
            ca_volume is not None
            and volumes[ca_volume].get("secret", {}).get("secretName") == "mc-client-ca",
        )
        check(
            "defect 11: certificate files are mounted as directories (no subPath), so renewals reach the pod",
            all("subPath" not in mount for mount in mounts.values()),
        )
        check(
            "defect 11: the server is told how often to reload them",
            config.get("MAILCONNECT_TLS_RELOAD_INTERVAL") == "10s",
        )
        expect_render_error(
            "defect 11: mutual TLS without a client CA Secret is refused",
            {"tls": {"enabled": True, "secretName": "mc-tls", "mutual": True}, "tests": {"enabled": False}},
            "tls.clientCa.secretName",
        )


def check_defect_12() -> None:
    with group("defect 12"):
        values = {"tls": {"enabled": True, "secretName": "mc-tls"}}
        manifests = render(values)
        validate_schemas("defect 12: TLS without mutual", manifests)
        check_release("TLS", values, manifests)
        monitor = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        policy = one(
            render({**values, "networkPolicy": {"healthFrom": monitor}}), "NetworkPolicy", "mc-mailconnect"
        )["spec"]
        rules = [r for r in policy["ingress"] if any(p["port"] == "health" for p in r["ports"])]
        check(
            "defect 12: networkPolicy.healthFrom opens the health port to those peers only",
            len(rules) == 1 and rules[0].get("from") == monitor,
        )
        check(
            "defect 12: service.appProtocol overrides the default",
            one(render({"service": {"appProtocol": "kubernetes.io/h2c"}}), "Service", "mc-mailconnect")[
                "spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c",
        )


def server_env(manifests: dict[str, list[dict]]) -> dict[str, dict]:
    """The server container's env entries by name."""
    container = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {env["name"]: env for env in container.get("env", [])}


def egress_rules_with_ports(manifests: dict[str, list[dict]], ports: set[int]) -> list[dict]:
    """The server NetworkPolicy's egress rules whose TCP ports are exactly these."""
    policy = one(manifests, "NetworkPolicy", server_name(manifests))["spec"]
    return [
        rule for rule in policy["egress"]
        if {p["port"] for p in rule["ports"]} == ports and all(p.get("protocol") == "TCP" for p in rule["ports"])
    ]


def reaches_public_v4_and_v6(rule: dict) -> bool:
    """The rule's peers are public IPv4 and IPv6: 0.0.0.0/0 and ::/0 without private ranges."""
    blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"].get("except", []))
              for peer in rule.get("to", []) if "ipBlock" in peer}
    return (
        {"0.0.0.0/0", "::/0"} <= set(blocks)
        and {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= blocks["0.0.0.0/0"]
        and {"fc00::/7", "fe80::/10"} <= blocks["::/0"]
    )


def check_issue_14(production: dict) -> None:
    """InboxConnectionService's settings: the monitor and limits in the ConfigMap, the relay and
    the OAuth clients (ids and token URLs plain, secrets from the Secret, left out when empty), and
    the NetworkPolicy's egress to the relay and the token endpoints."""
    import base64

    inbox_env = {env for env, _ in OPTIONAL_SECRETS.values()} | {
        "MAILCONNECT_NOTIFICATION_FROM",
        "MAILCONNECT_GOOGLE_OAUTH_CLIENT_ID",
        "MAILCONNECT_GOOGLE_OAUTH_TOKEN_URL",
        "MAILCONNECT_MICROSOFT_OAUTH_CLIENT_ID",
        "MAILCONNECT_MICROSOFT_OAUTH_TOKEN_URL",
    }
    with group("issue 14: defaults"):
        manifests = render({})
        config = one(manifests, "ConfigMap")["data"]
        expected = {
            "MAILCONNECT_INBOX_LIMITS": "enterprise=100,free=1,professional=100,starter=1",
            "MAILCONNECT_CONNECTION_CHECK_INTERVAL": "15m",
            "MAILCONNECT_CONNECTION_FAILURE_THRESHOLD": "3",
            "MAILCONNECT_CONNECTION_FAILURE_MIN_SPAN": "30m",
            "MAILCONNECT_CONNECTION_CHECK_CONCURRENCY": "8",
            "MAILCONNECT_BACKGROUND_POLL_INTERVAL": "5s",
        }
        for key, value in expected.items():
            check(f"issue 14: the ConfigMap sets {key}={value}", config.get(key) == value, str(config.get(key)))
        check(
            "issue 14: no relay, From or OAuth client by default (nothing in the ConfigMap or env)",
            not (inbox_env & (set(config) | set(server_env(manifests)))),
            str(inbox_env & (set(config) | set(server_env(manifests)))),
        )
        check(
            "issue 14: the chart's Secret holds no relay or client secret entry by default",
            set(one(manifests, "Secret")["data"]) == {"database-url", "jwt-secret"},
            str(set(one(manifests, "Secret")["data"])),
        )
        check(
            "issue 14: no egress rule for a relay or token endpoint by default",
            len(one(manifests, "NetworkPolicy", "mc-mailconnect")["spec"]["egress"]) == 3,
        )
    with group("issue 14: empty values are left out"):
        empty = {
            "secrets": {"smtpRelayUrl": "", "googleOAuthClientSecret": "", "microsoftOAuthClientSecret": ""},
            "oauth": {"google": {"clientId": "", "tokenUrl": ""}, "microsoft": {"clientId": "", "tokenUrl": ""}},
            "config": {"notificationFrom": ""},
        }
        manifests = render(empty)
        present = inbox_env & (set(one(manifests, "ConfigMap")["data"]) | set(server_env(manifests)))
        check(
            "issue 14: empty relay URL, client ids, secrets, token URLs and From set no variable "
            "(the server would take an empty relay URL for a relay)",
            present == set(),
            str(present),
        )
        check(
            "issue 14: and no empty entries in the chart's Secret",
            set(one(manifests, "Secret")["data"]) == {"database-url", "jwt-secret"},
        )
    with group("issue 14: whole numbers"):
        big = {"config": {"connectionFailureThreshold": 1000000, "connectionCheckConcurrency": 2000000,
                          "inboxLimits": {"enterprise": 1000000}}}
        config = one(render(big), "ConfigMap")["data"]
        check(
            "issue 14: failure threshold and check concurrency render as digits",
            config.get("MAILCONNECT_CONNECTION_FAILURE_THRESHOLD") == "1000000"
            and config.get("MAILCONNECT_CONNECTION_CHECK_CONCURRENCY") == "2000000",
            f"{config.get('MAILCONNECT_CONNECTION_FAILURE_THRESHOLD')} {config.get('MAILCONNECT_CONNECTION_CHECK_CONCURRENCY')}",
        )
        check(
            "issue 14: inbox limits render as digits; tiers not set keep the defaults",
            config.get("MAILCONNECT_INBOX_LIMITS") == "enterprise=1000000,free=1,professional=100,starter=1",
            str(config.get("MAILCONNECT_INBOX_LIMITS")),
        )
    chart_made = {
        "secrets": {
            "smtpRelayUrl": "smtp://notify:relay-pass@smtp.example.com:587?tls=required",
            "googleOAuthClientSecret": "google-client-secret-value",
            "microsoftOAuthClientSecret": "microsoft-client-secret-value",
        },
        "oauth": {
            "google": {"clientId": "1234-abc.apps.googleusercontent.com"},
            "microsoft": {"clientId": "6f1c2b7e-3d4a-4e5f-9a8b-0c1d2e3f4a5b",
                          "tokenUrl": "https://login.example.com:8443/tenant/oauth2/v2.0/token"},
        },
        "config": {"notificationFrom": "CRM <mail-connections@example.com>"},
    }
    with group("issue 14: relay and OAuth clients in the chart's Secret"):
        manifests = render(chart_made)
        validate_schemas("issue 14: relay and OAuth clients in the chart's Secret", manifests)
        check_release("issue 14 chart's Secret", chart_made, manifests)
        env = server_env(manifests)
        data = one(manifests, "Secret")["data"]
        for field, (name, entry) in OPTIONAL_SECRETS.items():
            ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(
                f"issue 14: {name} from the chart's Secret, entry {entry}, not optional",
                ref.get("name") == "mc-mailconnect-chart-secret" and ref.get("key") == entry
                and not ref.get("optional"),
                str(ref),
            )
            check(
                f"issue 14: the chart's Secret holds secrets.{field} as {entry}",
                base64.b64decode(data.get(entry, "")).decode() == chart_made["secrets"][field],
            )
        config = one(manifests, "ConfigMap")["data"]
        check(
            "issue 14: From, client ids and the token URL given are plain settings",
            config.get("MAILCONNECT_NOTIFICATION_FROM") == "CRM <mail-connections@example.com>"
            and config.get("MAILCONNECT_GOOGLE_OAUTH_CLIENT_ID") == "1234-abc.apps.googleusercontent.com"
            and config.get("MAILCONNECT_MICROSOFT_OAUTH_CLIENT_ID") == "6f1c2b7e-3d4a-4e5f-9a8b-0c1d2e3f4a5b"
            and config.get("MAILCONNECT_MICROSOFT_OAUTH_TOKEN_URL")
            == "https://login.example.com:8443/tenant/oauth2/v2.0/token",
        )
        check(
            "issue 14: a token URL left empty is the server's default (not set)",
            "MAILCONNECT_GOOGLE_OAUTH_TOKEN_URL" not in config,
        )
        plain = yaml.safe_dump(one(manifests, "ConfigMap")) + yaml.safe_dump(
            [e for e in env.values() if "value" in e])
        check(
            "issue 14: the relay's password and the client secrets appear in no plain setting",
            not any(secret in plain for secret in ("relay-pass", "client-secret-value")),
        )
        check(
            "issue 14: a new relay URL rolls the pods (checksum/secret)",
            pod_annotations(manifests)["checksum/secret"]
            != pod_annotations(render({**chart_made, "secrets": {**chart_made["secrets"],
                                        "smtpRelayUrl": "smtps://smtp.example.com:465"}}))["checksum/secret"],
        )
        renamed = render({**chart_made, "secrets": {**chart_made["secrets"], "keys": {"smtpRelayUrl": "relay"}}})
        check(
            "issue 14: secrets.keys names the relay's entry in the chart's Secret too",
            "relay" in one(renamed, "Secret")["data"]
            and server_env(renamed)["MAILCONNECT_SMTP_RELAY_URL"]["valueFrom"]["secretKeyRef"]["key"] == "relay",
        )
    with group("issue 14: existing Secret"):
        older = render({"secrets": {"existingSecret": "mailconnect"}})
        env = server_env(older)
        check(
            "issue 14: an existing Secret without the new entries keeps working (none referenced)",
            not ({name for name, _ in OPTIONAL_SECRETS.values()} & set(env))
            and "MAILCONNECT_ENCRYPTION_KEYS" in env,
        )
        named = {
            "secrets": {"existingSecret": "mailconnect", "keys": {
                "smtpRelayUrl": "relay-url", "googleOAuthClientSecret": "google-secret",
                "microsoftOAuthClientSecret": "microsoft-secret"}},
            "oauth": chart_made["oauth"],
        }
        manifests = render(named)
        check_release("issue 14 existing Secret", named, manifests)
        env = server_env(manifests)
        for field, (name, _) in OPTIONAL_SECRETS.items():
            ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(
                f"issue 14: {name} from the existing Secret's entry secrets.keys.{field}, required",
                ref == {"name": "mailconnect", "key": named["secrets"]["keys"][field]},
                str(ref),
            )
        expect_render_error(
            "issue 14: a relay URL in values beside an existing Secret is refused (it would be ignored)",
            {"secrets": {"existingSecret": "mailconnect", "smtpRelayUrl": "smtp://relay:25"}},
            "secrets.smtpRelayUrl is not used with secrets.existingSecret",
        )
        expect_render_error(
            "issue 14: a Google client secret without its client id is refused",
            {"secrets": {"googleOAuthClientSecret": "s"}},
            "needs oauth.google.clientId",
        )
        expect_render_error(
            "issue 14: a Microsoft client secret entry without its client id is refused",
            {"secrets": {"existingSecret": "mailconnect", "keys": {"microsoftOAuthClientSecret": "m"}}},
            "needs oauth.microsoft.clientId",
        )
        public_client = render({"oauth": {"google": {"clientId": "public-client"}}})
        check(
            "issue 14: a client id without a secret (a public client) sets no secret variable",
            "MAILCONNECT_GOOGLE_OAUTH_CLIENT_SECRET" not in server_env(public_client)
            and one(public_client, "ConfigMap")["data"].get("MAILCONNECT_GOOGLE_OAUTH_CLIENT_ID") == "public-client",
        )
    with group("issue 14: NetworkPolicy"):
        manifests = render(chart_made)
        relay = egress_rules_with_ports(manifests, {587})
        check(
            "issue 14: a rule of its own to the relay's port (587), any address by default",
            len(relay) == 1 and "to" not in relay[0],
            str(relay),
        )
        oauth = egress_rules_with_ports(manifests, {443, 8443})
        check(
            "issue 14: a rule to the token endpoints' ports (443, and 8443 from a token URL)",
            len(oauth) == 1,
            str(egress_rules_with_ports(manifests, {443})),
        )
        check(
            "issue 14: token endpoints on public IPv4 and IPv6 only",
            bool(oauth) and reaches_public_v4_and_v6(oauth[0]),
        )
        in_cluster = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mail"}}}]
        narrowed = {
            **chart_made,
            "oauth": {"google": {"clientId": "g"}},
            "networkPolicy": {"egress": {
                "mailPorts": [993], "mailTo": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                "relayPort": 1025, "relayTo": in_cluster}},
        }
        narrowed["secrets"] = {"smtpRelayUrl": "smtp://relay.mail.svc:1025"}
        manifests = render(narrowed)
        validate_schemas("issue 14: relay in the cluster, mail egress narrowed", manifests)
        relay = egress_rules_with_ports(manifests, {1025})
        check(
            "issue 14: networkPolicy.egress.relayPort and relayTo (a relay in the cluster)",
            len(relay) == 1 and relay[0].get("to") == in_cluster,
            str(relay),
        )
        oauth = egress_rules_with_ports(manifests, {443})
        check(
            "issue 14: the token endpoints stay reachable when mailPorts and mailTo are narrowed",
            len(oauth) == 1 and reaches_public_v4_and_v6(oauth[0]),
        )
        existing = render({"secrets": {"existingSecret": "mailconnect", "keys": {"smtpRelayUrl": "relay-url"}}})
        check(
            "issue 14: a relay from an existing Secret opens its port too",
            len(egress_rules_with_ports(existing, {587})) == 1,
        )
    with group("issue 14: production"):
        manifests = render(production)
        env = server_env(manifests)
        keys = production["secrets"]["keys"]
        for field, (name, _) in OPTIONAL_SECRETS.items():
            ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(
                f"production: {name} from the existing Secret ({keys.get(field)}), required",
                ref == {"name": "mailconnect-production", "key": keys.get(field)},
                str(ref),
            )
        config = one(manifests, "ConfigMap")["data"]
        check(
            "production: Google and Microsoft client ids, the From and the inbox limits",
            config.get("MAILCONNECT_GOOGLE_OAUTH_CLIENT_ID") == production["oauth"]["google"]["clientId"]
            and config.get("MAILCONNECT_MICROSOFT_OAUTH_CLIENT_ID") == production["oauth"]["microsoft"]["clientId"]
            and config.get("MAILCONNECT_NOTIFICATION_FROM") == production["config"]["notificationFrom"]
            and config.get("MAILCONNECT_INBOX_LIMITS") == "enterprise=1000,free=1,professional=250,starter=1",
            str({k: v for k, v in config.items() if k in inbox_env or "INBOX" in k}),
        )
        relay = egress_rules_with_ports(manifests, {production["networkPolicy"]["egress"]["relayPort"]})
        check(
            "production: egress to the relay in its namespace",
            len(relay) == 1 and relay[0].get("to") == production["networkPolicy"]["egress"]["relayTo"],
        )
        oauth = egress_rules_with_ports(manifests, {443})
        check(
            "production: egress to the token endpoints over HTTPS, public IPv4 and IPv6",
            len(oauth) == 1 and reaches_public_v4_and_v6(oauth[0]),
        )
    with group("issue 14: schema"):
        for label, values, message in [
            ("a failure threshold of 0", {"config": {"connectionFailureThreshold": 0}},
             "'/config/connectionFailureThreshold': minimum"),
            ("a check concurrency as a string", {"config": {"connectionCheckConcurrency": "8"}},
             "'/config/connectionCheckConcurrency': got string"),
            ("an unknown tier", {"config": {"inboxLimits": {"gold": 3}}}, "'/config/inboxLimits': additional properties 'gold'"),
            ("a negative inbox limit", {"config": {"inboxLimits": {"free": -1}}}, "'/config/inboxLimits/free': minimum"),
            ("a check interval that is no duration", {"config": {"connectionCheckInterval": "15 minutes"}},
             "'/config/connectionCheckInterval': '15 minutes' does not match"),
            ("a token URL that is not http(s)", {"oauth": {"google": {"clientId": "g", "tokenUrl": "ftp://x/t"}}},
             "'/oauth/google/tokenUrl': 'ftp://x/t' does not match"),
            ("a relay URL that is not smtp(s)", {"secrets": {"smtpRelayUrl": "relay.example.com:25"}},
             "'/secrets/smtpRelayUrl': 'relay.example.com:25' does not match"),
            ("the relay URL in config.extra (a secret in the ConfigMap)",
             {"config": {"extra": {"MAILCONNECT_SMTP_RELAY_URL": "smtp://u:p@relay:25"}}},
             "invalid propertyName 'MAILCONNECT_SMTP_RELAY_URL'"),
            ("an OAuth client secret in config.extra",
             {"config": {"extra": {"MAILCONNECT_GOOGLE_OAUTH_CLIENT_SECRET": "s"}}},
             "invalid propertyName 'MAILCONNECT_GOOGLE_OAUTH_CLIENT_SECRET'"),
        ]:
            expect_render_error(f"issue 14: the schema refuses {label}", values, message)


def check_conventions() -> None:
    with group("convention: topology spread"):
        manifests = render({})
        deployment = one(manifests, "Deployment")
        pod = deployment["spec"]["template"]
        spreads = pod["spec"].get("topologySpreadConstraints", [])
        check(
            "convention: replicas spread over nodes and zones by default",
            {s["topologyKey"] for s in spreads} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
            and all(s["whenUnsatisfiable"] == "ScheduleAnyway" for s in spreads)
            and all(selects(s["labelSelector"]["matchLabels"], pod["metadata"]["labels"]) for s in spreads),
        )
        off = one(render({"defaultTopologySpread": False}), "Deployment")["spec"]["template"]["spec"]
        check("convention: the default spread can be turned off", "topologySpreadConstraints" not in off)
    with group("convention: security contexts"):
        openshift = {
            "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
            "securityContext": {"runAsUser": None, "runAsGroup": None},
        }
        manifests = render(openshift)
        validate_schemas("convention: OpenShift restricted-v2 security contexts", manifests)
        pods = {"server": one(manifests, "Deployment")["spec"]["template"]["spec"]} | {
            name: spec["spec"] for name, spec in hook_pods(manifests).items()
        }
        for name, pod in pods.items():
            contexts = [pod.get("securityContext", {})] + [c.get("securityContext", {}) for c in pod["containers"]]
            check(
                f"convention: {name} without fixed user, group or fsGroup (OpenShift assigns them)",
                not any(key in context for context in contexts for key in ("runAsUser", "runAsGroup", "fsGroup")),
            )
            check_hardened_pod(f"convention: {name} (OpenShift)", pod)
    with group("convention: extra env, volumes, containers"):
        values = {
            "extraEnv": [{"name": "RUST_LOG", "value": "info,mailconnect=debug"}],
            "extraEnvFrom": [{"configMapRef": {"name": "proxy-settings"}}],
            "extraVolumes": [{"name": "pg-ca", "secret": {"secretName": "pg-ca"}}],
            "extraVolumeMounts": [{"name": "pg-ca", "mountPath": "/etc/pg-ca", "readOnly": True}],
            "initContainers": [{"name": "wait", "image": "busybox:1.36", "command": ["true"]}],
            "sidecars": [{"name": "proxy", "image": "envoyproxy/envoy:v1.31.0"}],
            "config": {"extra": {"RUST_LOG": "warn"}},
            "image": {"digest": "sha256:" + "a" * 64},
            "commonLabels": {"team": "crm", "cost-center": "mail"},
            "autoscaling": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}},
        }
        manifests = render(values)
        validate_schemas("convention: extras", manifests)
        pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
        server = pod["containers"][0]
        check(
            "convention: extraEnv (RUST_LOG) on the server",
            {"name": "RUST_LOG", "value": "info,mailconnect=debug"} in server["env"],
        )
        check("convention: extraEnvFrom", {"configMapRef": {"name": "proxy-settings"}} in server["envFrom"])
        check("convention: extraVolumes", any(v["name"] == "pg-ca" for v in pod["volumes"]))
        check("convention: extraVolumeMounts", any(m["name"] == "pg-ca" for m in server["volumeMounts"]))
        check("convention: initContainers", [c["name"] for c in pod.get("initContainers", [])] == ["wait"])
        check("convention: sidecars", [c["name"] for c in pod["containers"]] == ["mailconnect", "proxy"])
        job = one(manifests, "Job")["spec"]["template"]["spec"]
        migrate = job["containers"][0]
        check(
            "convention: the migration Job gets extraEnv, extraEnvFrom and the extra volumes too",
            {"name": "RUST_LOG", "value": "info,mailconnect=debug"} in migrate["env"]
            and {"configMapRef": {"name": "proxy-settings"}} in migrate.get("envFrom", [])
            and any(m["name"] == "pg-ca" for m in migrate["volumeMounts"])
            and any(v["name"] == "pg-ca" for v in job["volumes"]),
        )
        check(
            "convention: config.extra takes RUST_LOG",
            one(manifests, "ConfigMap")["data"].get("RUST_LOG") == "warn",
        )
        check(
            "convention: image.digest pins the image",
            server["image"] == "ghcr.io/mailconnect/mailconnect:0.1.0@sha256:" + "a" * 64,
        )
        unlabelled = [
            f"{doc['kind']}/{doc['metadata']['name']}"
            for docs in manifests.values()
            for doc in docs
            if "kind" in doc and doc["metadata"].get("labels", {}).get("team") != "crm"
        ]
        check("convention: commonLabels on every resource", unlabelled == [], str(unlabelled))
        check(
            "convention: commonLabels on the pods",
            one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"].get("cost-center") == "mail",
        )
        check(
            "convention: HPA behavior",
            one(manifests, "HorizontalPodAutoscaler")["spec"].get("behavior")
            == {"scaleDown": {"stabilizationWindowSeconds": 600}},
        )
        expect_render_error(
            "convention: commonLabels never replace the chart's selector labels",
            {"commonLabels": {"app.kubernetes.io/name": "other"}},
            "invalid propertyName 'app.kubernetes.io/name'",
        )
    with group("convention: helm test"):
        for label, values in [
            ("cleartext", {}),
            ("TLS", {"tls": {"enabled": True, "secretName": "mc-tls"}}),
            ("mutual TLS", {"tls": {"enabled": True, "secretName": "mc-tls", "mutual": True,
                                    "clientCa": {"secretName": "mc-client-ca"}},
                            "tests": {"tls": {"clientSecretName": "mc-test-client"}}}),
        ]:
            manifests = render(values)
            service = one(manifests, "Service", "mc-mailconnect")
            pod = one(manifests, "Pod")
            args = pod["spec"]["containers"][0]["args"]
            check(
                f"convention: helm test pod ({label}) is a test hook calling the Service",
                pod["metadata"]["annotations"].get("helm.sh/hook") == "test"
                and f"-addr=mc-mailconnect.crm.svc:{service['spec']['ports'][0]['port']}" in args
                and "grpc-health-probe" in pod["spec"]["containers"][0]["image"],
            )
            check(
                f"convention: helm test pod ({label}) speaks {'TLS' if values else 'cleartext'}",
                ("-tls" in args) == bool(values)
                and any(a.startswith("-tls-client-cert=") for a in args) == ("mutual" in label),
            )
            check_hardened_pod(f"convention: helm test pod ({label})", pod["spec"])
        expect_render_error(
            "convention: helm test with mutual TLS needs a client certificate",
            {"tls": {"enabled": True, "secretName": "mc-tls", "mutual": True,
                     "clientCa": {"secretName": "mc-client-ca"}}},
            "tests.tls.clientSecretName",
        )
        policy = one(render({"networkPolicy": {"ingressFrom": [{"podSelector": {"matchLabels": {"role": "crm"}}}]}}),
                     "NetworkPolicy", "mc-mailconnect")["spec"]
        test_labels = one(render({}), "Pod")["metadata"]["labels"]
        check(
            "convention: a restricted NetworkPolicy still lets the helm test pod call",
            any(
                "podSelector" in peer and selects(peer["podSelector"]["matchLabels"], test_labels)
                for rule in policy["ingress"]
                for peer in rule.get("from", [])
            ),
        )
        check("convention: tests can be turned off", by_kind(render({"tests": {"enabled": False}}), "Pod") == [])


def leaf_values(values: dict, prefix: str = "") -> list[str]:
    """Dotted names of the values a user sets: nested maps are walked, lists and free-form maps
    (empty by default) are leaves."""
    names = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("requests", "limits", "extra"):
            names += leaf_values(value, name + ".")
        else:
            names.append(name)
    return names


def check_docs() -> None:
    with group("docs"):
        chart_readme = (CHART / "README.md").read_text()
        defaults = yaml.safe_load((CHART / "values.yaml").read_text())
        table = chart_readme[chart_readme.index("## Values"):]
        rows = {
            name
            for cell in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE)
            for name in re.findall(r"`([^`]+)`", cell)
        }
        missing = [
            name
            for name in leaf_values(defaults)
            if name not in rows and not any(name.startswith(row + ".") for row in rows)
        ]
        check("docs: the chart README has a row for every value", missing == [], str(missing))
        unknown = [row for row in rows if not any(
            name == row or name.startswith(row + ".") for name in leaf_values(defaults))]
        check("docs: every row of the chart README is a value", unknown == [], str(unknown))
        readme = README.read_text()
        deploy = readme[readme.index("## Deploying on Kubernetes"):]
        deploy = deploy[: deploy.index("\n## ", 3)]
        check(
            "docs: README says metrics are pushed over OTLP, so no ServiceMonitor",
            "OTLP" in deploy and "ServiceMonitor" in deploy,
        )
        check(
            "docs: README gives the replicas × pool ≤ max_connections rule",
            "max_connections" in deploy and "database.maxConnections" in deploy,
        )
        check(
            "docs: README warns GitOps users about the generated JWT secret",
            "GitOps" in deploy and "existingSecret" in deploy,
        )
        check(
            "docs: README's secret creation commands name the Secret the chart never replaces",
            "create secret generic mailconnect" in deploy
            and "secrets.existingSecret=mailconnect" in deploy,
        )
        entries = ["encryption-keys", "smtp-relay-url", "google-oauth-client-secret", "microsoft-oauth-client-secret"]
        check(
            "issue 14, docs: README's Secret has the encryption keys (openssl rand -base64 32), the "
            "relay and the OAuth client secrets, and names them for the chart",
            all(f"--from-literal={entry}=" in deploy for entry in entries)
            and "openssl rand -base64 32" in deploy
            and all(f"secrets.keys.{field}=" in deploy for field in OPTIONAL_SECRETS),
            str([entry for entry in entries if f"--from-literal={entry}=" not in deploy]),
        )
        check(
            "issue 14, docs: README says notifications are only listed without a relay, and grants "
            "stored unverified without an OAuth client",
            "only listed" in deploy and "unverified" in deploy,
        )


def main() -> int:
    global CHART
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=CHART, help="chart directory to check")
    CHART = parser.parse_args().chart.resolve()
    production = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())

    lint = helm.lint(str(CHART), strict=True)
    check("lint --strict (defaults): no errors", not lint["errors"], str(lint))
    lint = helm.lint(str(CHART), production, strict=True)
    check("lint --strict (production values): no errors", not lint["errors"], str(lint))

    with group("defaults"):
        check_release("defaults", {}, render({}))
    with group("production"):
        check_release("production", production, render(production))
    with group("production upgrade"):
        upgrade = render(production, upgrade=True)
        check("production upgrade renders the migration hook too", len(by_kind(upgrade, "Job")) == 1)

    with group("production values"):
        prod_manifests = render(production)
        pod = one(prod_manifests, "Deployment")["spec"]["template"]["spec"]
        config = one(prod_manifests, "ConfigMap")["data"]
        check(
            "production: mutual TLS files mounted and configured",
            config.get("MAILCONNECT_TLS_CLIENT_CA") == "/etc/mailconnect/client-ca/ca.crt"
            and any(v["name"] == "tls" and v["secret"]["secretName"] == "mailconnect-tls" for v in pod["volumes"])
            and any(v["name"] == "client-ca" and v["secret"]["secretName"] == "mailconnect-client-ca"
                    for v in pod["volumes"]),
        )
        check("production: the pool size it sets", config.get("MAILCONNECT_DB_MAX_CONNECTIONS") == "8")
        check(
            "production: OTLP endpoint configured",
            config.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.observability.svc:4317",
        )
        check(
            "production: JWT public keys mounted",
            config.get("MAILCONNECT_JWT_PUBLIC_KEYS") == "/etc/mailconnect/jwt/idp-rs256.pem",
        )

    with group("schema"):
        expect_render_error("schema refuses an unknown log format", {"config": {"logFormat": "xml"}}, "logFormat")
        expect_render_error("schema refuses a misspelt top-level key", {"replicas": 3}, "replicas")
        expect_render_error(
            "schema refuses a JWT secret the server would refuse (under 32 bytes)",
            {"secrets": {"jwtSecret": "too-short"}},
            "jwtSecret",
        )
        expect_render_error(
            "a database URL (or existingSecret) is required",
            {"secrets": {"databaseUrl": ""}},
            "secrets.databaseUrl",
        )
        expect_render_error("TLS needs a Secret name", {"tls": {"enabled": True}}, "tls.secretName")

    with tempfile.TemporaryDirectory() as tmp:
        check_defect_1(Path(tmp))
        check_defect_3()
        check_defect_4()
        check_defect_5()
        check_defect_6()
        check_defect_7()
        check_defect_8(production)
        check_defect_10(Path(tmp))
        check_defect_11()
        check_defect_12()
        check_issue_14(production)
        check_conventions()
        check_docs()

    print(f"\n{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
