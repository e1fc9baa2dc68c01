{{/* The pod template shared by the Deployment and the autosharding StatefulSet (spec.template). */}}
{{- define "ehpc-image-exporter.podTemplate" -}}
{{- $secretName := include "ehpc-image-exporter.credentialsSecretName" . }}
{{- $scheme := ternary "HTTPS" "HTTP" .Values.webConfig.tls }}
metadata:
  labels:
    {{- include "ehpc-image-exporter.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Roll the pods when the config (or the created Secret) changes.
    checksum/config: {{ include "ehpc-image-exporter.configYaml" . | sha256sum }}
    {{- if .Values.credentials.create }}
    checksum/credentials: {{ printf "%s/%s" .Values.credentials.accessKeyId .Values.credentials.accessKeySecret | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ehpc-image-exporter.serviceAccountName" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: exporter
      image: {{ include "ehpc-image-exporter.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - run
        - --config=/etc/ehpc-image-exporter/config.yaml
        - --web.listen-address=:{{ .Values.service.port }}
        - --log-format={{ .Values.logFormat }}
        - --log-level={{ .Values.logLevel }}
        {{- if .Values.webConfig.secretName }}
        - --web.config.file=/etc/ehpc-image-exporter/web/web-config.yml
        {{- end }}
        {{- if .Values.autosharding.enabled }}
        # Every pod gets the same total; its own ordinal comes from POD_NAME (`<name>-<n>`).
        - --total-shards={{ .Values.autosharding.replicas }}
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.service.port }}
          protocol: TCP
      env:
        {{- if .Values.autosharding.enabled }}
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- if $secretName }}
        - name: ALIBABA_CLOUD_ACCESS_KEY_ID
          valueFrom:
            secretKeyRef:
              name: {{ $secretName }}
              key: {{ .Values.credentials.keys.accessKeyId }}
        - name: ALIBABA_CLOUD_ACCESS_KEY_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ $secretName }}
              key: {{ .Values.credentials.keys.accessKeySecret }}
        {{- end }}
        {{- range $i, $t := .Values.targets }}
        {{- if and $t.credentials $t.credentials.existingSecret }}
        {{- $keys := $t.credentials.keys | default dict }}
        # targets[{{ $i }}] (account {{ $t.account }}): its config credentials read these two variables.
        - name: {{ include "ehpc-image-exporter.targetEnvName" (list $i "ACCESS_KEY_ID") }}
          valueFrom:
            secretKeyRef:
              name: {{ $t.credentials.existingSecret }}
              key: {{ $keys.accessKeyId | default "access-key-id" }}
        - name: {{ include "ehpc-image-exporter.targetEnvName" (list $i "ACCESS_KEY_SECRET") }}
          valueFrom:
            secretKeyRef:
              name: {{ $t.credentials.existingSecret }}
              key: {{ $keys.accessKeySecret | default "access-key-secret" }}
        {{- end }}
        {{- end }}
        {{- if include "ehpc-image-exporter.rrsaInject" . }}
        # RRSA, exactly as the ack-pod-identity-webhook injects it (see rrsaTokenDir in _helpers.tpl).
        - name: ALIBABA_CLOUD_ROLE_ARN
          value: {{ .Values.rrsa.roleArn | quote }}
        - name: ALIBABA_CLOUD_OIDC_PROVIDER_ARN
          value: {{ .Values.rrsa.oidcProviderArn | quote }}
        - name: ALIBABA_CLOUD_OIDC_TOKEN_FILE
          value: {{ printf "%s/token" (include "ehpc-image-exporter.rrsaTokenDir" .) | quote }}
        {{- end }}
        {{- if .Values.credentials.disableEcsMetadata }}
        - name: ALIBABA_CLOUD_ECS_METADATA_DISABLED
          value: "true"
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.livenessProbe }}
      {{- $probe := deepCopy . }}
      {{- if $probe.httpGet }}{{ $_ := set $probe.httpGet "scheme" $scheme }}{{ end }}
      livenessProbe:
        {{- toYaml $probe | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      {{- $probe := deepCopy . }}
      {{- if $probe.httpGet }}{{ $_ := set $probe.httpGet "scheme" $scheme }}{{ end }}
      readinessProbe:
        {{- toYaml $probe | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/ehpc-image-exporter/config.yaml
          subPath: config.yaml
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if .Values.state.enabled }}
        # The state file's directory, writable: SQLite writes FILE-wal and FILE-shm beside FILE.
        - name: state
          mountPath: {{ include "ehpc-image-exporter.stateDir" . }}
        {{- end }}
        {{- if .Values.webConfig.secretName }}
        - name: web-config
          mountPath: /etc/ehpc-image-exporter/web
          readOnly: true
        {{- end }}
        {{- if include "ehpc-image-exporter.rrsaInject" . }}
        - name: rrsa-oidc-token
          mountPath: {{ include "ehpc-image-exporter.rrsaTokenDir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "ehpc-image-exporter.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit }}
    {{- if .Values.state.enabled }}
    {{- if and .Values.state.persistence.enabled (not .Values.autosharding.enabled) }}
    - name: state
      persistentVolumeClaim:
        claimName: {{ include "ehpc-image-exporter.stateClaimName" . }}
    {{- else if not .Values.state.persistence.enabled }}
    # Survives container restarts (not a deleted or rescheduled pod); state.persistence keeps it longer.
    - name: state
      emptyDir:
        sizeLimit: {{ .Values.state.sizeLimit }}
    {{- end }}
    {{- /* A StatefulSet with persistence gets `state` from its volumeClaimTemplates, one claim per pod. */}}
    {{- end }}
    {{- if .Values.webConfig.secretName }}
    - name: web-config
      secret:
        secretName: {{ .Values.webConfig.secretName }}
    {{- end }}
    {{- if include "ehpc-image-exporter.rrsaInject" . }}
    # The pod's ServiceAccount token for STS (audience sts.aliyuncs.com), rotated by the kubelet; it is
    # independent of automountServiceAccountToken, which stays off (no Kubernetes API token).
    - name: rrsa-oidc-token
      projected:
        defaultMode: 420
        sources:
          - serviceAccountToken:
              audience: sts.aliyuncs.com
              expirationSeconds: 3600
              path: token
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
