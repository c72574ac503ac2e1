{{/* Names, labels, the image and the shared pod settings of every Voltgrid component. */}}

{{- define "voltgrid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "voltgrid.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. No chart version: an upgrade must not touch objects that did not change. */}}
{{- define "voltgrid.labels" -}}
app.kubernetes.io/name: {{ include "voltgrid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: voltgrid
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include with (dict "root" $ "component" "gateway"). */}}
{{- define "voltgrid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voltgrid.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "voltgrid.componentLabels" -}}
{{ include "voltgrid.labels" .root }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- end }}

{{- define "voltgrid.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "voltgrid.webhookSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "voltgrid.fullname" .)) .Values.webhook.tls.secretName }}
{{- end }}

{{- define "voltgrid.storageClaimName" -}}
{{- default (printf "%s-sessions" (include "voltgrid.fullname" .)) .Values.storage.existingClaim }}
{{- end }}

{{/* Environment every component shares: identity from the downward API, logging, tracing. */}}
{{- define "voltgrid.commonEnv" -}}
- name: POD_ID
  valueFrom:
    fieldRef:
      apiVersion: v1
      fieldPath: metadata.name
- name: VOLTGRID_NAMESPACE
  valueFrom:
    fieldRef:
      apiVersion: v1
      fieldPath: metadata.namespace
- name: HOME
  value: /tmp
- name: VOLTGRID_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
{{- if .root.Values.tracing.enabled }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "voltgrid-%s" .component | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.tracing.otlpEndpoint | quote }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .root.Values.tracing.sampleRatio | quote }}
{{- end }}
{{- end }}

{{/* Pod-level fields shared by the Deployments and the janitor's pods. */}}
{{- define "voltgrid.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* The writable scratch directory of a read-only root filesystem. */}}
{{- define "voltgrid.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- define "voltgrid.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Scope of both admission webhooks: Voltgrid-enabled namespaces, never the release namespace. */}}
{{- define "voltgrid.webhookNamespaceSelector" -}}
matchExpressions:
  - key: voltgrid.dev/enabled
    operator: In
    values: ["true"]
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: [{{ .Release.Namespace | quote }}]
{{- end }}
{{- define "voltgrid.webhookMetadata" -}}
labels:
  {{- include "voltgrid.componentLabels" (dict "root" . "component" "webhook") | nindent 2 }}
{{- if eq .Values.webhook.tls.mode "certManager" }}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s-webhook" .Release.Namespace (include "voltgrid.fullname" .) }}
{{- end }}
{{- end }}

{{/* The Secret holding the sandbox claim key (templates/sandbox-claims.yaml), its mount and setting. */}}
{{- define "voltgrid.claimKeySecret" -}}
{{- default (printf "%s-sandbox-claims" (include "voltgrid.fullname" .)) .Values.sandboxClaims.existingSecret -}}
{{- end }}
{{- define "voltgrid.claimKeyVolume" -}}
- name: sandbox-claims
  secret:
    secretName: {{ include "voltgrid.claimKeySecret" . }}
    defaultMode: 0440
{{- end }}
{{- define "voltgrid.claimKeyMount" -}}
- name: sandbox-claims
  mountPath: /var/run/voltgrid/sandbox-claims
  readOnly: true
{{- end }}
{{- define "voltgrid.claimKeyPath" -}}
/var/run/voltgrid/sandbox-claims/claim-key.pem
{{- end }}
