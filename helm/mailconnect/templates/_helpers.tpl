{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "mailconnect.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "mailconnect.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mailconnect.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The server pods' labels that the Deployment, Service, PodDisruptionBudget and NetworkPolicy
select (the Deployment's selector is immutable: never change these). */}}
{{- define "mailconnect.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailconnect.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of everything but the selector: commonLabels, which never replace the chart's own. */}}
{{- define "mailconnect.commonLabels" -}}
{{- $own := dict
  "helm.sh/chart" (include "mailconnect.chart" .)
  "app.kubernetes.io/version" (.Values.image.tag | default .Chart.AppVersion | trunc 63)
  "app.kubernetes.io/managed-by" .Release.Service
  "app.kubernetes.io/part-of" "mailconnect" }}
{{- merge $own (.Values.commonLabels | default dict) | toYaml }}
{{- end }}

{{- define "mailconnect.labels" -}}
{{ include "mailconnect.commonLabels" . }}
{{ include "mailconnect.selectorLabels" . }}
{{- end }}

{{/* Labels of the migration Job and its pod: never the server's selector labels, so that the
Service, PodDisruptionBudget, NetworkPolicy and HorizontalPodAutoscaler never count its pod. */}}
{{- define "mailconnect.migrationLabels" -}}
{{ include "mailconnect.commonLabels" . }}
app.kubernetes.io/name: {{ printf "%s-migrations" (include "mailconnect.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: migrations
{{- end }}

{{/* Labels of the `helm test` pod (not the server's selector labels either). */}}
{{- define "mailconnect.testLabels" -}}
{{ include "mailconnect.commonLabels" . }}
app.kubernetes.io/name: {{ printf "%s-test" (include "mailconnect.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}

{{- define "mailconnect.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailconnect.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The migration Job's ServiceAccount, empty for the namespace's default. The chart's own
ServiceAccount does not exist yet when a pre-install hook runs, so it is never used. */}}
{{- define "mailconnect.migrationServiceAccountName" -}}
{{- $sa := .Values.migrations.serviceAccount }}
{{- if $sa.create }}
{{- default (printf "%s-migrate" (include "mailconnect.fullname" .)) $sa.name }}
{{- else if $sa.name }}
{{- $sa.name }}
{{- else if and (not .Values.serviceAccount.create) .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the database URL, JWT secret and encryption keys. */}}
{{- define "mailconnect.secretName" -}}
{{- default (include "mailconnect.chartSecretName" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* The chart's own Secret: a name of its own, never the release's full name, which is what the
README has operators create by hand. */}}
{{- define "mailconnect.chartSecretName" -}}
{{- printf "%s-chart-secret" (include "mailconnect.fullname" .) }}
{{- end }}

{{/* The chart's Secret is a hook with before-hook-creation, so Helm deletes whatever Secret has
its name before creating it again: refuse (fail) when that Secret is not this release's chart's
own. Arguments: ctx (the chart's context), existing (the Secret of that name, from lookup; empty
when there is none, and always offline). */}}
{{- define "mailconnect.chartSecretCheckOwner" -}}
{{- if .existing }}
{{- $ctx := .ctx }}
{{- $labels := .existing.metadata.labels | default dict }}
{{- if not (and (eq (get $labels "app.kubernetes.io/instance") $ctx.Release.Name) (eq (get $labels "app.kubernetes.io/component") "chart-secret")) }}
{{- fail (printf "Secret %s exists in namespace %s but this release's chart did not create it (it lacks the labels app.kubernetes.io/instance=%s and app.kubernetes.io/component=chart-secret), and the chart would delete and replace it: point secrets.existingSecret at it, or rename or delete it" (include "mailconnect.chartSecretName" $ctx) $ctx.Release.Namespace $ctx.Release.Name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The JWT secret the chart's Secret holds: the value given; else the one kept in the chart's
Secret (existing, checked by mailconnect.chartSecretCheckOwner); else the one chart 0.1 kept in
a Secret named after the release's full name (legacy, only when that chart made it for this
release); else a new random one. Arguments: ctx, existing, legacy (lookup results). */}}
{{- define "mailconnect.chartSecretJwt" -}}
{{- $ctx := .ctx }}
{{- $key := $ctx.Values.secrets.keys.jwtSecret }}
{{- $jwt := $ctx.Values.secrets.jwtSecret }}
{{- if and (not $jwt) .existing }}
{{- $jwt = get (.existing.data | default dict) $key | b64dec }}
{{- end }}
{{- if and (not $jwt) .legacy }}
{{- $labels := .legacy.metadata.labels | default dict }}
{{- $annotations := .legacy.metadata.annotations | default dict }}
{{- if and (eq (get $labels "app.kubernetes.io/instance") $ctx.Release.Name) (hasPrefix (printf "%s-" $ctx.Chart.Name) (get $labels "helm.sh/chart")) (get $annotations "helm.sh/hook") }}
{{- $jwt = get (.legacy.data | default dict) $key | b64dec }}
{{- end }}
{{- end }}
{{- $jwt | default (randAlphaNum 48) }}
{{- end }}

{{/* checksum/secret: changes when the Secret's content does, so the pods roll.
- The chart's Secret: a hash of the values it is made from. A generated JWT secret is not part
  of it (it never changes once made, and hashing a fresh random one would roll the pods on every
  `helm template`), so GitOps renders stay stable.
- secrets.existingSecret: a hash of that Secret's data as `helm upgrade` reads it (lookup), so
  an upgrade after the Secret changed rolls the pods. Offline renders (helm template, GitOps)
  cannot read it: there the hash is constant, and pods roll on a Secret change only by hand
  (kubectl rollout restart) or with a controller such as Reloader. */}}
{{- define "mailconnect.secretChecksum" -}}
{{- if .Values.secrets.existingSecret }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace .Values.secrets.existingSecret | default dict }}
{{- get $existing "data" | default dict | toJson | sha256sum }}
{{- else }}
{{- dict "values" (omit .Values.secrets "existingSecret") "disableSharedSecret" .Values.jwt.disableSharedSecret | toJson | sha256sum }}
{{- end }}
{{- end }}

{{/* repository:tag, repository@digest or repository:tag@digest. */}}
{{- define "mailconnect.imageRef" -}}
{{- $ref := .image.repository }}
{{- $tag := .image.tag | default .default }}
{{- if $tag }}{{ $ref = printf "%s:%s" $ref $tag }}{{ end }}
{{- if .image.digest }}{{ $ref = printf "%s@%s" $ref .image.digest }}{{ end }}
{{- $ref }}
{{- end }}

{{- define "mailconnect.image" -}}
{{- include "mailconnect.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) }}
{{- end }}

{{/* The container's gRPC port (MAILCONNECT_LISTEN_ADDR in the ConfigMap). */}}
{{- define "mailconnect.grpcPort" -}}50051{{- end }}

{{/* Where the probes go: the health-only plaintext port when the main port speaks TLS. */}}
{{- define "mailconnect.probePort" -}}
{{- if .Values.tls.enabled }}{{ .Values.healthPort | int64 }}{{ else }}{{ include "mailconnect.grpcPort" . }}{{ end }}
{{- end }}

{{/* A number as digits: YAML numbers arrive as float64, which Go prints as 1e+06 from a million
on; the server cannot parse that. Strings and booleans as they are. */}}
{{- define "mailconnect.digits" -}}
{{- if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ fail (printf "%v is not a whole number: quote it as a string" .) }}{{ end }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* A duration (1h30m, 30s, 500ms: the schema's pattern) in milliseconds. */}}
{{- define "mailconnect.durationMillis" -}}
{{- $units := dict "ns" 0.000001 "us" 0.001 "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0 "d" 86400000.0 }}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(ns|us|ms|s|m|h|d)" . -1 }}
{{- $unit := regexFind "[a-z]+$" . }}
{{- $total = addf $total (mulf (regexFind "^[0-9]+" . | float64) (get $units $unit)) }}
{{- end }}
{{- printf "%.3f" $total }}
{{- end }}

{{/* Checks no JSON schema can express, since they relate values to each other. Included by the
Deployment, so every render runs them. */}}
{{- define "mailconnect.validate" -}}
{{- $config := .Values.config }}
{{- $timeout := include "mailconnect.durationMillis" $config.requestTimeout | float64 }}
{{- $grace := mulf (int64 $config.shutdownGraceSeconds) 1000.0 }}
{{- if lt $grace $timeout }}
{{- fail (printf "config.shutdownGraceSeconds (%ds) must be at least config.requestTimeout (%s): a shorter drain cuts the slowest calls off on every rollout" (int64 $config.shutdownGraceSeconds) $config.requestTimeout) }}
{{- end }}
{{- with $config.maxConnectionAgeGrace }}
{{- if lt (include "mailconnect.durationMillis" . | float64) $timeout }}
{{- fail (printf "config.maxConnectionAgeGrace (%s) must be at least config.requestTimeout (%s): calls still running when a connection ages out would be cut off" . $config.requestTimeout) }}
{{- end }}
{{- end }}
{{- $budget := int64 .Values.database.maxConnections }}
{{- if and $budget $config.dbMaxConnections }}
{{- $pods := ternary (int64 .Values.autoscaling.maxReplicas) (int64 .Values.replicaCount) .Values.autoscaling.enabled }}
{{- /* The Deployment's maxSurge of 25%, rounded up, during a rollout. */}}
{{- $peak := add $pods (div (add $pods 3) 4) }}
{{- $needed := add (mul $peak (int64 $config.dbMaxConnections)) 1 }}
{{- if gt $needed $budget }}
{{- fail (printf "%d pods at most (%d replicas + 25%% rollout surge) × config.dbMaxConnections %d + 1 for the migration Job = %d database connections, more than database.maxConnections %d: lower the pool or the replicas, or raise database.maxConnections to what Postgres allows this release (0 turns the check off)" $peak $pods (int64 $config.dbMaxConnections) $needed $budget) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.mutual (not .Values.tls.enabled) }}
{{- fail "tls.mutual needs tls.enabled" }}
{{- end }}
{{- if and .Values.tls.enabled .Values.tls.mutual (not .Values.tls.clientCa.secretName) }}
{{- fail "tls.mutual needs tls.clientCa.secretName: a Secret holding the CA that signs client certificates (the serving certificate's ca.crt is not used)" }}
{{- end }}
{{- $secrets := .Values.secrets }}
{{- range $field, $_ := include "mailconnect.optionalSecrets" . | fromYaml }}
{{- if and $secrets.existingSecret (get $secrets $field) }}
{{- fail (printf "secrets.%s is not used with secrets.existingSecret: put it in Secret %s and name its entry in secrets.keys.%s" $field $secrets.existingSecret $field) }}
{{- end }}
{{- end }}
{{- range $provider := list "google" "microsoft" }}
{{- $field := printf "%sOAuthClientSecret" $provider }}
{{- if and (include "mailconnect.optionalSecretKey" (dict "ctx" $ "field" $field)) (not (get $.Values.oauth $provider).clientId) }}
{{- fail (printf "a client secret for %s (secrets.%s or secrets.keys.%s) needs oauth.%s.clientId: without a client id the server verifies no grant" $provider $field $field $provider) }}
{{- end }}
{{- end }}
{{- end }}

{{/* An env entry from an entry of the Secret (the chart's or secrets.existingSecret). Never
optional: a mistyped entry name stops the pod (CreateContainerConfigError) instead of starting a
server without the setting. Arguments: ctx (the chart's context), name (the variable), key (the
entry). */}}
{{- define "mailconnect.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "mailconnect.secretName" .ctx }}
      key: {{ .key }}
{{- end }}

{{/* The database URL from the Secret, for the server and the migration Job. */}}
{{- define "mailconnect.databaseUrlEnv" -}}
{{- include "mailconnect.secretEnv" (dict "ctx" . "name" "MAILCONNECT_DATABASE_URL" "key" .Values.secrets.keys.databaseUrl) }}
{{- end }}

{{/* The Secret entries of optional settings: the variable each one sets, by its field in
secrets and secrets.keys, and its name in the chart's own Secret unless secrets.keys names it. */}}
{{- define "mailconnect.optionalSecrets" -}}
smtpRelayUrl: {env: MAILCONNECT_SMTP_RELAY_URL, entry: smtp-relay-url}
googleOAuthClientSecret: {env: MAILCONNECT_GOOGLE_OAUTH_CLIENT_SECRET, entry: google-oauth-client-secret}
microsoftOAuthClientSecret: {env: MAILCONNECT_MICROSOFT_OAUTH_CLIENT_SECRET, entry: microsoft-oauth-client-secret}
{{- end }}

{{/* The entry holding an optional secret setting when it is configured, else empty: with
secrets.existingSecret, the entry named in secrets.keys (empty there = that Secret has none);
without, its entry in the chart's Secret when a value is given (an empty value configures
nothing: the server would take an empty relay URL for a relay). Arguments: ctx, field (e.g.
smtpRelayUrl). */}}
{{- define "mailconnect.optionalSecretKey" -}}
{{- $secrets := .ctx.Values.secrets }}
{{- $key := get $secrets.keys .field }}
{{- if $secrets.existingSecret }}
{{- $key }}
{{- else if get $secrets .field }}
{{- $key | default (get (get (include "mailconnect.optionalSecrets" .ctx | fromYaml) .field) "entry") }}
{{- end }}
{{- end }}

{{/* The ports of the configured OAuth clients' token endpoints, comma-separated (empty without
a client): the token URL's port, else 443 (80 for http://); an empty token URL is the server's
default, Google's or Microsoft's, on 443. */}}
{{- define "mailconnect.oauthTokenPorts" -}}
{{- $ports := list }}
{{- range $provider := list "google" "microsoft" }}
{{- $client := get $.Values.oauth $provider }}
{{- if $client.clientId }}
{{- $url := urlParse ($client.tokenUrl | default "https://server-default") }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) }}
{{- $ports = append $ports ($port | default (eq $url.scheme "http" | ternary "80" "443")) }}
{{- end }}
{{- end }}
{{- $ports | uniq | sortAlpha | join "," }}
{{- end }}

{{/* Writable scratch space under a read-only root filesystem. */}}
{{- define "mailconnect.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
- name: data
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "mailconnect.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/mailconnect
{{- end }}

{{/* NetworkPolicy egress rules to DNS and Postgres, for the server and the migration Job. */}}
{{- define "mailconnect.databaseEgress" -}}
{{- $egress := .Values.networkPolicy.egress }}
# DNS, to resolve Postgres, mail servers and the collector.
- ports:
    - port: {{ include "mailconnect.digits" $egress.dnsPort }}
      protocol: UDP
    - port: {{ include "mailconnect.digits" $egress.dnsPort }}
      protocol: TCP
# Postgres.
- ports:
    - port: {{ include "mailconnect.digits" $egress.postgresPort }}
      protocol: TCP
  {{- with $egress.postgresTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
