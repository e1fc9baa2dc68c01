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

{{/* Where the RRSA OIDC token is mounted, and the file the credential chain reads: the paths the
ack-pod-identity-webhook injects (Alibaba Cloud, "Use RRSA to authorize different pods to access different
cloud services", https://www.alibabacloud.com/help/doc-detail/356611.html, section "manually modify the
application template": env ALIBABA_CLOUD_ROLE_ARN, ALIBABA_CLOUD_OIDC_PROVIDER_ARN,
ALIBABA_CLOUD_OIDC_TOKEN_FILE=/var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token, and a projected
serviceAccountToken volume `rrsa-oidc-token` with audience sts.aliyuncs.com, expirationSeconds 3600,
path token, mounted read-only at /var/run/secrets/ack.alibabacloud.com/rrsa-tokens). */}}
{{- define "ehpc-image-exporter.rrsaTokenDir" -}}
/var/run/secrets/ack.alibabacloud.com/rrsa-tokens
{{- end }}

{{/* The autosharding StatefulSet's governing headless Service. Its own name, so switching a release
between modes replaces the ClusterIP Service instead of trying to change its (immutable) clusterIP. */}}
{{- define "ehpc-image-exporter.headlessServiceName" -}}
{{- printf "%s-headless" (include "ehpc-image-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The directory of state.path: the mounted volume (SQLite creates FILE-wal and FILE-shm beside FILE). */}}
{{- define "ehpc-image-exporter.stateDir" -}}
{{- dir .Values.state.path }}
{{- end }}

{{/* The Deployment's state claim: state.persistence.existingClaim, or the one the chart creates. */}}
{{- define "ehpc-image-exporter.stateClaimName" -}}
{{- if .Values.state.persistence.existingClaim }}
{{- .Values.state.persistence.existingClaim }}
{{- else }}
{{- printf "%s-state" (include "ehpc-image-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* "true" when the chart renders the RRSA environment itself (rrsa.injectEnvironment, the default). */}}
{{- define "ehpc-image-exporter.rrsaInject" -}}
{{- if and .Values.rrsa.enabled (ne (toString .Values.rrsa.injectEnvironment) "false") }}true{{ end }}
{{- end }}

{{/* The env var names holding targets[i]'s AccessKey pair: derived from the index, so any account name
works (a ${VAR} name allows only [A-Za-z0-9_]). Call with (list $i "ACCESS_KEY_ID"). */}}
{{- define "ehpc-image-exporter.targetEnvName" -}}
{{- printf "EHPC_TARGET_%d_%s" (index . 0 | int) (index . 1) }}
{{- end }}

{{/* The config file's content as a YAML mapping: `config` as given, plus what the chart derives from
`targets` and `rrsa`. Keys the chart interprets are camelCase in the values (credentials, rrsa,
assumeRole, accountQps, accountMaxConcurrency); blocks copied into the config verbatim (regions, api,
refresh, images, labels, discovery) keep the config's snake_case, as `config:` itself does. */}}
{{- define "ehpc-image-exporter.configData" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if .Values.targets }}
{{- /* Per-account keys belong to each target; top-level api/refresh stay the defaults of every target. */}}
{{- $discovery := get $config "discovery" }}
{{- $config = omit $config "credentials" "images" "discovery" }}
{{- $api := omit ($config.api | default dict) "region_id" }}
{{- if $api }}{{ $_ := set $config "api" $api }}{{ else }}{{ $config = omit $config "api" }}{{ end }}
{{- $targets := list }}
{{- range $i, $t := .Values.targets }}
{{- $out := dict "account" $t.account "regions" $t.regions }}
{{- if and $t.credentials $t.credentials.existingSecret }}
{{- $_ := set $out "credentials" (dict "type" "access_key"
      "access_key_id" (printf "${%s}" (include "ehpc-image-exporter.targetEnvName" (list $i "ACCESS_KEY_ID")))
      "access_key_secret" (printf "${%s}" (include "ehpc-image-exporter.targetEnvName" (list $i "ACCESS_KEY_SECRET")))) }}
{{- else if $t.rrsa }}
{{- $creds := dict "type" "oidc_role_arn" }}
{{- with $.Values.rrsa.stsEndpoint }}{{ $_ := set $creds "sts_endpoint" . }}{{ end }}
{{- $_ := set $out "credentials" $creds }}
{{- end }}
{{- with $t.assumeRole }}
{{- $role := dict "role_arn" .roleArn }}
{{- with .externalId }}{{ $_ := set $role "external_id" . }}{{ end }}
{{- with .roleSessionName }}{{ $_ := set $role "role_session_name" . }}{{ end }}
{{- with .durationSeconds }}{{ $_ := set $role "duration_seconds" . }}{{ end }}
{{- with .stsEndpoint }}{{ $_ := set $role "sts_endpoint" . }}{{ end }}
{{- $_ := set $out "assume_role" $role }}
{{- end }}
{{- range $key := list "api" "refresh" "images" "labels" }}
{{- if hasKey $t $key }}{{ $_ := set $out $key (get $t $key) }}{{ end }}
{{- end }}
{{- if hasKey $t "discovery" }}
{{- $_ := set $out "discovery" $t.discovery }}
{{- else if $discovery }}
{{- $_ := set $out "discovery" $discovery }}
{{- end }}
{{- if hasKey $t "accountQps" }}{{ $_ := set $out "account_qps" $t.accountQps }}{{ end }}
{{- if hasKey $t "accountMaxConcurrency" }}{{ $_ := set $out "account_max_concurrency" $t.accountMaxConcurrency }}{{ end }}
{{- $targets = append $targets $out }}
{{- end }}
{{- $_ := set $config "targets" $targets }}
{{- else if and .Values.rrsa.enabled .Values.rrsa.stsEndpoint }}
{{- /* The default chain's RRSA step has no endpoint override; this config key is the exporter's. */}}
{{- $_ := set $config "credentials" (dict "type" "default" "sts_endpoint" .Values.rrsa.stsEndpoint) }}
{{- end }}
{{- if .Values.state.enabled }}
{{- $_ := set $config "state" (dict "path" .Values.state.path) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The exporter config file exactly as mounted (the ConfigMap's block scalar keeps one final newline),
so the pod's checksum/config annotation is the sha256 of the file the exporter reads. */}}
{{- define "ehpc-image-exporter.configYaml" -}}
{{ include "ehpc-image-exporter.configData" . }}{{ "\n" }}
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
{{- $inject := include "ehpc-image-exporter.rrsaInject" . }}
{{- if and $inject (or (not .Values.rrsa.roleArn) (not .Values.rrsa.oidcProviderArn)) }}
{{- fail "rrsa.enabled with rrsa.injectEnvironment (the default): set rrsa.roleArn and rrsa.oidcProviderArn, or set rrsa.injectEnvironment=false and rrsa.roleName to leave the wiring to the ack-pod-identity-webhook" }}
{{- end }}
{{- if and .Values.rrsa.enabled (not $inject) (not .Values.rrsa.roleName) }}
{{- fail "rrsa.enabled with rrsa.injectEnvironment=false: set rrsa.roleName to the RAM role's name (the webhook reads it from the ServiceAccount)" }}
{{- end }}
{{- if and .Values.rrsa.enabled (not $inject) (not .Values.serviceAccount.create) }}
{{- fail "rrsa.enabled with rrsa.injectEnvironment=false needs serviceAccount.create (annotate your own ServiceAccount with pod-identity.alibabacloud.com/role-name instead)" }}
{{- end }}
{{- if and .Values.rrsa.stsEndpoint (not .Values.rrsa.enabled) }}
{{- fail "rrsa.stsEndpoint is set but rrsa.enabled is false" }}
{{- end }}
{{- if and .Values.rrsa.enabled .Values.rrsa.stsEndpoint (not .Values.targets) (dig "credentials" "" (.Values.config | default dict)) }}
{{- fail "rrsa.stsEndpoint writes config.credentials ({type: default, sts_endpoint}); remove config.credentials" }}
{{- end }}
{{- include "ehpc-image-exporter.validateTargets" . }}
{{- include "ehpc-image-exporter.validateState" . }}
{{- include "ehpc-image-exporter.validateAutosharding" . }}
{{- if and .Values.webConfig.tls (not .Values.webConfig.secretName) }}
{{- fail "webConfig.tls is true: set webConfig.secretName" }}
{{- end }}
{{- end }}

{{/* Every target names a unique account, at least one region, and at most one source of credentials. */}}
{{- define "ehpc-image-exporter.validateTargets" -}}
{{- if .Values.targets }}
{{- if dig "credentials" "" (.Values.config | default dict) }}
{{- fail "targets is set: move config.credentials into each target's credentials (config.credentials is the single-target form)" }}
{{- end }}
{{- if dig "images" "" (.Values.config | default dict) }}
{{- fail "targets is set: move config.images into each target's images (config.images is the single-target form)" }}
{{- end }}
{{- if dig "labels" "" (.Values.config | default dict) }}
{{- fail "targets is set: move config.labels into each target's labels (config.labels is the single-target form)" }}
{{- end }}
{{- end }}
{{- $seen := dict }}
{{- range $i, $t := .Values.targets }}
{{- if not $t.account }}
{{- fail (printf "targets[%d]: set account (the value of the account label)" $i) }}
{{- end }}
{{- $where := printf "targets[%d] (account %s)" $i $t.account }}
{{- if hasKey $seen $t.account }}
{{- fail (printf "%s: account %s is also targets[%v]; account names must be unique" $where $t.account (get $seen $t.account)) }}
{{- end }}
{{- $_ := set $seen $t.account $i }}
{{- if not $t.regions }}
{{- fail (printf "%s: set at least one entry under regions ([{region_id: cn-hangzhou}])" $where) }}
{{- end }}
{{- $regions := dict }}
{{- range $j, $r := $t.regions }}
{{- if not $r.region_id }}
{{- fail (printf "%s: regions[%d] has no region_id" $where $j) }}
{{- end }}
{{- if hasKey $regions $r.region_id }}
{{- fail (printf "%s: region %s is listed twice" $where $r.region_id) }}
{{- end }}
{{- $_ := set $regions $r.region_id true }}
{{- end }}
{{- if and $t.credentials (not $t.credentials.existingSecret) }}
{{- fail (printf "%s: credentials is set without credentials.existingSecret" $where) }}
{{- end }}
{{- if and $t.credentials $t.rrsa }}
{{- fail (printf "%s: credentials.existingSecret and rrsa are mutually exclusive (pick the AccessKey Secret or the pod's RRSA role)" $where) }}
{{- end }}
{{- if and $t.rrsa (not $.Values.rrsa.enabled) }}
{{- fail (printf "%s: rrsa is true but rrsa.enabled is false (the pod has no RRSA role to use)" $where) }}
{{- end }}
{{- if and $t.assumeRole (not $t.assumeRole.roleArn) }}
{{- fail (printf "%s: assumeRole is set without assumeRole.roleArn" $where) }}
{{- end }}
{{- end }}
{{- end }}

{{/* state.path names a file in a directory of its own, which the chart mounts writable. */}}
{{- define "ehpc-image-exporter.validateState" -}}
{{- $state := .Values.state }}
{{- if hasKey (.Values.config | default dict) "state" }}
{{- fail "config.state is set: use state.enabled and state.path (the chart writes config.state and mounts its directory)" }}
{{- end }}
{{- if $state.enabled }}
{{- $path := toString $state.path }}
{{- $dir := include "ehpc-image-exporter.stateDir" . }}
{{- if or (not (isAbs $path)) (hasSuffix "/" $path) (ne (clean $path) $path) }}
{{- fail (printf "state.path %q must be an absolute, clean file path such as /var/lib/ehpc-image-exporter/state.db" $path) }}
{{- end }}
{{- if eq $dir "/" }}
{{- fail (printf "state.path %q: the file needs a directory of its own (the chart mounts state.path's directory writable), e.g. /var/lib/ehpc-image-exporter/state.db" $path) }}
{{- end }}
{{- /* The mount would hide or overlap another one: the config file, the web config, the RRSA token, /tmp. */}}
{{- range $taken := list "/tmp" "/etc/ehpc-image-exporter" (include "ehpc-image-exporter.rrsaTokenDir" .) }}
{{- if or (eq $dir $taken) (hasPrefix (printf "%s/" $taken) $dir) (hasPrefix (printf "%s/" $dir) $taken) }}
{{- fail (printf "state.path %q: its directory %s overlaps the chart's mount %s; pick a directory of its own such as /var/lib/ehpc-image-exporter" $path $dir $taken) }}
{{- end }}
{{- end }}
{{- range .Values.extraVolumeMounts }}
{{- if eq (clean (toString .mountPath)) $dir }}
{{- fail (printf "state.path %q: extraVolumeMounts already mounts %s (volume %s); the chart mounts the state directory itself" $path $dir .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $state.persistence.enabled (not $state.enabled) }}
{{- fail "state.persistence.enabled is true but state.enabled is false: there is no state file to persist" }}
{{- end }}
{{- if and $state.enabled $state.persistence.enabled }}
{{- $psc := .Values.podSecurityContext | default dict }}
{{- /* Without runAsUser the image's user (65532) runs: non-root too. */}}
{{- if and (ne (toString (dig "runAsUser" "" $psc)) "0") (or (not (hasKey $psc "fsGroup")) (kindIs "invalid" (index $psc "fsGroup"))) }}
{{- fail "state.persistence.enabled with a non-root runAsUser needs podSecurityContext.fsGroup (e.g. 65532): a new volume is writable for the exporter's user only through that group" }}
{{- end }}
{{- if and (not .Values.autosharding.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "state.persistence.enabled with replicaCount %d: the Deployment's pods would share one claim and one state file; use replicaCount 1, or autosharding for a claim per pod" (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Autosharding sets the shard layout itself: nothing else may set it. */}}
{{- define "ehpc-image-exporter.validateAutosharding" -}}
{{- $auto := .Values.autosharding }}
{{- if $auto.enabled }}
{{- if lt (int $auto.replicas) 1 }}
{{- fail (printf "autosharding.replicas is %v: it is the number of shards (StatefulSet pods), at least 1" $auto.replicas) }}
{{- end }}
{{- if ne (int .Values.replicaCount) 1 }}
{{- fail (printf "autosharding.enabled: the pod count is autosharding.replicas (%v); leave replicaCount at 1 (it is %v)" $auto.replicas .Values.replicaCount) }}
{{- end }}
{{- if .Values.state.persistence.existingClaim }}
{{- fail (printf "state.persistence.existingClaim (%s) cannot be used with autosharding: one shared claim cannot give each replica its own state; remove it to get a claim per pod from volumeClaimTemplates" .Values.state.persistence.existingClaim) }}
{{- end }}
{{- if hasKey (.Values.config | default dict) "sharding" }}
{{- fail "config.sharding is set with autosharding.enabled: autosharding gives every pod --total-shards and its ordinal; remove config.sharding" }}
{{- end }}
{{- range .Values.extraArgs }}
{{- $flag := regexReplaceAll "=.*$" (toString .) "" }}
{{- if has $flag (list "--shard" "--total-shards" "--pod") }}
{{- fail (printf "extraArgs has %s with autosharding.enabled: the chart sets --total-shards and the pod name itself; remove it" $flag) }}
{{- end }}
{{- end }}
{{- if ne .Values.service.type "ClusterIP" }}
{{- fail (printf "service.type %s with autosharding.enabled: the pods are published through a headless Service only (each pod is a different shard, so a load-balanced Service would answer with a random one)" .Values.service.type) }}
{{- end }}
{{- end }}
{{- end }}
