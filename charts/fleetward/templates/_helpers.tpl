{{/* The chart name. */}}
{{- define "fleetward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: the release name, with the chart name unless the release name holds it. */}}
{{- define "fleetward.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fleetward.operator.fullname" -}}
{{- printf "%s-operator" (include "fleetward.fullname" .) }}
{{- end }}

{{- define "fleetward.dataplane.fullname" -}}
{{- printf "%s-dataplane" (include "fleetward.fullname" .) }}
{{- end }}

{{- define "fleetward.writer.fullname" -}}
{{- printf "%s-writer" (include "fleetward.fullname" .) }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "fleetward.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "fleetward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleetward
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: pass (dict "ctx" $ "component" "operator"). */}}
{{- define "fleetward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetward.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "fleetward.componentLabels" -}}
{{ include "fleetward.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "fleetward.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the PolicySync token, and its key. */}}
{{- define "fleetward.tokenSecret" -}}
{{- default (printf "%s-sync-token" (include "fleetward.fullname" .)) .Values.policySync.token.existingSecret }}
{{- end }}

{{- define "fleetward.leaseName" -}}
{{- include "fleetward.operator.fullname" . }}
{{- end }}

{{/* Where the token and certificates are mounted in both containers. */}}
{{- define "fleetward.tokenDir" -}}/var/run/secrets/fleetward/sync{{- end }}
{{- define "fleetward.syncTlsDir" -}}/var/run/secrets/fleetward/sync-tls{{- end }}
{{- define "fleetward.mqttsTlsDir" -}}/var/run/secrets/fleetward/mqtts-tls{{- end }}
{{- define "fleetward.postgresCaDir" -}}/var/run/secrets/fleetward/postgres-ca{{- end }}

{{/* The PolicySync URL of the operator Service, as a dataplane dials it. */}}
{{- define "fleetward.operatorUrl" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" .Values.policySync.tls.enabled) (include "fleetward.operator.fullname" .) .Release.Namespace (int .Values.policySync.port) }}
{{- end }}

{{/* Checks across values that the schema cannot express. */}}
{{- define "fleetward.validate" -}}
{{- $dp := .Values.dataplane }}
{{- $many := or (and $dp.autoscaling.enabled (gt (int $dp.autoscaling.maxReplicas) 1)) (and (not $dp.autoscaling.enabled) (gt (int $dp.replicas) 1)) }}
{{- if and $many (not .Values.nats.url) }}
{{- fail "nats.url is empty but more than one dataplane pod may run: set nats.url to your NATS server (nats://HOST:4222), or run one pod (dataplane.autoscaling.enabled=false, dataplane.replicas=1)" }}
{{- end }}
{{- if and $dp.autoscaling.enabled (gt (int $dp.autoscaling.minReplicas) (int $dp.autoscaling.maxReplicas)) }}
{{- fail (printf "dataplane.autoscaling.minReplicas (%d) is above maxReplicas (%d)" (int $dp.autoscaling.minReplicas) (int $dp.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and $dp.mqtts.enabled (not $dp.mqtts.existingSecret) (not $dp.mqtts.certManager.enabled) }}
{{- fail "dataplane.mqtts.enabled needs a certificate: set dataplane.mqtts.existingSecret to a kubernetes.io/tls Secret, or dataplane.mqtts.certManager.enabled=true with an issuerRef and dnsNames" }}
{{- end }}
{{- if and $dp.mqtts.enabled $dp.mqtts.certManager.enabled (or (not $dp.mqtts.certManager.issuerRef.name) (not $dp.mqtts.certManager.dnsNames)) }}
{{- fail "dataplane.mqtts.certManager needs issuerRef.name (an Issuer or ClusterIssuer) and at least one of dnsNames (the names devices connect to)" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.serviceMonitor.enabled (not .Values.networkPolicy.metricsFrom) }}
{{- fail "networkPolicy.enabled and serviceMonitor.enabled with an empty networkPolicy.metricsFrom would block Prometheus from scraping /metrics: set networkPolicy.metricsFrom to where Prometheus runs (e.g. [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]), or turn off networkPolicy.enabled or serviceMonitor.enabled" }}
{{- end }}
{{- if and .Values.history.enabled (not .Values.nats.url) }}
{{- fail "history.enabled needs NATS with JetStream, and nats.url is empty: the dataplanes publish the messages of channels with history to a JetStream stream the writer consumes. Set nats.url to a NATS server with JetStream on (nats-server 2.10.5 or later), or turn off history.enabled" }}
{{- end }}
{{- if and .Values.history.enabled (not .Values.history.postgres.existingSecret) }}
{{- fail (printf "history.enabled needs history.postgres.existingSecret: the name of a Secret in namespace %s whose key history.postgres.secretKey (%s) holds the PostgreSQL URL, postgres://user:password@host:5432/db (with CloudNativePG: <cluster>-app, secretKey uri)" .Release.Namespace .Values.history.postgres.secretKey) }}
{{- end }}
{{- if ge (int .Values.operator.lease.renewBeforeSeconds) (int .Values.operator.lease.durationSeconds) }}
{{- fail (printf "operator.lease.renewBeforeSeconds (%d) must be less than durationSeconds (%d)" (int .Values.operator.lease.renewBeforeSeconds) (int .Values.operator.lease.durationSeconds)) }}
{{- end }}
{{- end }}

{{/* The probes of a container whose admin endpoints are on port "admin": pass
(dict "ctx" $ "workload" $.Values.operator). The workload's probes are merged over `probes`. */}}
{{- define "fleetward.probes" -}}
{{- $probes := mergeOverwrite (deepCopy .ctx.Values.probes) (deepCopy (default dict .workload.probes)) }}
startupProbe:
  httpGet:
    path: /healthz
    port: admin
  {{- toYaml $probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  {{- toYaml $probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  {{- toYaml $probes.readiness | nindent 2 }}
{{- end }}

{{/* The Secret holding the keys user tokens are signed with (the operator creates it). */}}
{{- define "fleetward.signingSecretName" -}}
{{- printf "%s-signing-keys" (include "fleetward.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The PostgreSQL URL (and its CA) as environment variables, for the writer and the
dataplane's reader: both read FLEETWARD_HISTORY_POSTGRES_URL and FLEETWARD_HISTORY_POSTGRES_CA. */}}
{{- define "fleetward.historyEnv" -}}
{{- $pg := .Values.history.postgres -}}
- name: FLEETWARD_HISTORY_POSTGRES_URL
  valueFrom:
    secretKeyRef:
      name: {{ $pg.existingSecret }}
      key: {{ $pg.secretKey }}
{{- if $pg.tls.caSecret }}
- name: FLEETWARD_HISTORY_POSTGRES_CA
  value: {{ include "fleetward.postgresCaDir" . }}/ca.crt
{{- end }}
{{- end }}

{{/* The volume of PostgreSQL's CA, if history.postgres.tls.caSecret names one. */}}
{{- define "fleetward.historyCaVolume" -}}
{{- $tls := .Values.history.postgres.tls }}
{{- if $tls.caSecret -}}
- name: postgres-ca
  secret:
    secretName: {{ $tls.caSecret }}
    items:
      - key: {{ $tls.caKey }}
        path: ca.crt
{{- end }}
{{- end }}
