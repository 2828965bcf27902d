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

{{- define "mailconnect.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailconnect.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mailconnect.labels" -}}
helm.sh/chart: {{ include "mailconnect.chart" . }}
{{ include "mailconnect.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailconnect
{{- end }}

{{- define "mailconnect.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailconnect.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the database URL, JWT secret and encryption keys. */}}
{{- define "mailconnect.secretName" -}}
{{- default (include "mailconnect.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "mailconnect.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The container's gRPC port (MAILCONNECT_LISTEN_ADDR in the ConfigMap). */}}
{{- define "mailconnect.grpcPort" -}}50051{{- end }}

{{/* Where the probes go: the health-only plaintext port when the main port speaks TLS. */}}
{{- define "mailconnect.probePort" -}}
{{- if .Values.tls.enabled }}{{ .Values.healthPort }}{{ else }}{{ include "mailconnect.grpcPort" . }}{{ end }}
{{- end }}

{{/* The hardened container security context, shared by the server and the migration Job. */}}
{{- define "mailconnect.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "mailconnect.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The database URL from the Secret, for the server and the migration Job. */}}
{{- define "mailconnect.databaseUrlEnv" -}}
- name: MAILCONNECT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "mailconnect.secretName" . }}
      key: {{ .Values.secrets.keys.databaseUrl }}
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
