{{/* Chart name, overridable. */}}
{{- define "ehpc-image-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<chart>, unless the release name already contains the chart name. */}}
{{- define "ehpc-image-exporter.fullname" -}}
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

{{/* chart label value. */}}
{{- define "ehpc-image-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the pods; they never change across upgrades. */}}
{{- define "ehpc-image-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ehpc-image-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "ehpc-image-exporter.labels" -}}
helm.sh/chart: {{ include "ehpc-image-exporter.chart" . }}
{{ include "ehpc-image-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: exporter
app.kubernetes.io/part-of: ehpc-image-exporter
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "ehpc-image-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ehpc-image-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: the digest wins over the tag; the tag defaults to appVersion. */}}
{{- define "ehpc-image-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the AccessKey pair, or "" when static credentials are not used. */}}
{{- define "ehpc-image-exporter.credentialsSecretName" -}}
{{- if .Values.credentials.create }}
{{- printf "%s-credentials" (include "ehpc-image-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else if .Values.credentials.existingSecret }}
{{- .Values.credentials.existingSecret }}
{{- end }}
{{- end }}

{{/* The exporter config file exactly as mounted (the ConfigMap's block scalar keeps one final newline),
so the pod's checksum/config annotation is the sha256 of the file the exporter reads. */}}
{{- define "ehpc-image-exporter.configYaml" -}}
{{ toYaml .Values.config }}{{ "\n" }}
{{- end }}

{{/* Mutually exclusive or incomplete settings fail the render with a message that names the keys. */}}
{{- define "ehpc-image-exporter.validate" -}}
{{- if and .Values.credentials.create (or (not .Values.credentials.accessKeyId) (not .Values.credentials.accessKeySecret)) }}
{{- fail "credentials.create is true: set credentials.accessKeyId and credentials.accessKeySecret" }}
{{- end }}
{{- if and .Values.credentials.create .Values.credentials.existingSecret }}
{{- fail "credentials.create and credentials.existingSecret are mutually exclusive" }}
{{- end }}
{{- if and .Values.rrsa.enabled (include "ehpc-image-exporter.credentialsSecretName" .) }}
{{- fail "rrsa.enabled and AccessKey credentials (credentials.create / credentials.existingSecret) are mutually exclusive: the AccessKey would win" }}
{{- end }}
{{- if and .Values.rrsa.enabled (not .Values.rrsa.roleName) }}
{{- fail "rrsa.enabled is true: set rrsa.roleName to the RAM role's name" }}
{{- end }}
{{- if and .Values.rrsa.enabled (not .Values.serviceAccount.create) }}
{{- fail "rrsa.enabled needs serviceAccount.create (annotate your own ServiceAccount with pod-identity.alibabacloud.com/role-name instead)" }}
{{- end }}
{{- if and .Values.webConfig.tls (not .Values.webConfig.secretName) }}
{{- fail "webConfig.tls is true: set webConfig.secretName" }}
{{- end }}
{{- end }}
