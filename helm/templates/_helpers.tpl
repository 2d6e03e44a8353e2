{{/* Names ---------------------------------------------------------------------------------- */}}

{{- define "gensar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, at most 40 characters so "<fullname>-learner-head-svc" style names
that KubeRay derives stay within the 63-character DNS label limit. */}}
{{- define "gensar.fullname" -}}
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

{{- define "gensar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gensar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gensar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Ray heads run the autoscaler sidecar, the only GenSAR process that talks to the API. */}}
{{- define "gensar.rayHeadServiceAccountName" -}}
{{- printf "%s-ray-head" (include "gensar.fullname" .) }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{- define "gensar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gensar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gensar.labels" -}}
helm.sh/chart: {{ include "gensar.chart" . }}
{{ include "gensar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gensar
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "streams"). */}}
{{- define "gensar.componentSelectorLabels" -}}
{{ include "gensar.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gensar.componentLabels" -}}
{{ include "gensar.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------------- */}}

{{/* repository@digest when a digest is pinned, else repository:tag (tag defaults to appVersion). */}}
{{- define "gensar.imageRef" -}}
{{- $image := .image }}
{{- if eq $image.tag "latest" }}
{{- fail (printf "image tag \"latest\" is refused for %s: pin a version tag or a digest, so that a rollback restores the same image" $image.repository) }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .appVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "gensar.image" -}}
{{- include "gensar.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* Configuration ----------------------------------------------------------------------------- */}}

{{- define "gensar.qdrantUrl" -}}
{{- if .Values.qdrant.enabled }}
{{- printf "http://%s-qdrant:6333" (include "gensar.fullname" .) }}
{{- else }}
{{- required "qdrant.externalUrl is required when qdrant.enabled is false" .Values.qdrant.externalUrl }}
{{- end }}
{{- end }}

{{/* The non-secret environment of every GenSAR process, as a YAML map. The ConfigMap renders it
as data; the pre-install topic Job (which runs before the ConfigMap exists) renders it inline. */}}
{{- define "gensar.configData" -}}
HF_HUB_OFFLINE: "1"
TRANSFORMERS_OFFLINE: "1"
HOME: /tmp
GENSAR_STATE_DIR: {{ .Values.config.stateDir | quote }}
GENSAR_CACHE_DIR: {{ .Values.config.cacheDir | quote }}
GENSAR_KAFKA__BOOTSTRAP_SERVERS: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
GENSAR_KAFKA__TOPIC_PREFIX: {{ .Values.kafka.topicPrefix | quote }}
GENSAR_KAFKA__PARTITIONS: {{ .Values.kafka.partitions | quote }}
GENSAR_KAFKA__REPLICATION_FACTOR: {{ .Values.kafka.replicationFactor | quote }}
{{- if ne .Values.kafka.securityProtocol "PLAINTEXT" }}
GENSAR_KAFKA__SECURITY_PROTOCOL: {{ .Values.kafka.securityProtocol | quote }}
{{- end }}
{{- with .Values.kafka.sasl.mechanism }}
GENSAR_KAFKA__SASL_MECHANISM: {{ . | quote }}
{{- end }}
{{- if .Values.kafka.tls.caSecret }}
GENSAR_KAFKA__SSL_CAFILE: "/etc/gensar/kafka-ca/{{ .Values.kafka.tls.caKey }}"
{{- end }}
GENSAR_QDRANT__URL: {{ include "gensar.qdrantUrl" . | quote }}
# The artifact store every part reads (registry, base models, identifier maps, pins): the shared volume.
GENSAR_ARTIFACTS_DIR: {{ .Values.artifacts.mountPath | quote }}
# The dataset (serving's catalogue, the learner's item texts, the bootstrap's events): read-only.
GENSAR_DATA_DIR: {{ .Values.dataset.mountPath | quote }}
# The base model serving loads and the learner refreshes (the bootstrap Job writes it).
GENSAR_SERVING__BASE_MODEL: {{ .Values.bootstrap.baseModel | quote }}
# Listen on the pod address (the defaults bind loopback), for probes, peers and Prometheus.
GENSAR_STREAMS__WEB_HOST: "0.0.0.0"
GENSAR_STREAMS__WEB_PORT: {{ .Values.streams.webPort | quote }}
GENSAR_STREAMS__METRICS_HOST: "0.0.0.0"
GENSAR_STREAMS__METRICS_PORT: {{ .Values.streams.metricsPort | quote }}
GENSAR_LEARNER__METRICS_PORT: {{ .Values.learner.metricsPort | quote }}
{{- if .Values.streams.enabled }}
# Serving reads user histories through the stream workers' table API (its default is loopback).
GENSAR_SERVING__STREAMS_URL: {{ printf "http://%s-streams:%d" (include "gensar.fullname" .) (int .Values.streams.webPort) | quote }}
{{- end }}
{{- range $key, $value := .Values.config.extraEnv }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{- define "gensar.configChecksum" -}}
{{- include "gensar.configData" . | sha256sum }}
{{- end }}

{{/* Secret-backed variables: references only, never values. */}}
{{- define "gensar.kafkaSecretEnv" -}}
{{- with .Values.kafka.sasl.existingSecret }}
- name: GENSAR_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.kafka.sasl.usernameKey }}}
- name: GENSAR_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.kafka.sasl.passwordKey }}}
{{- end }}
{{- end }}

{{- define "gensar.secretEnv" -}}
{{- include "gensar.kafkaSecretEnv" . }}
{{- with .Values.qdrant.apiKeySecret }}
- name: GENSAR_QDRANT__API_KEY
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.qdrant.apiKeyKey }}}
{{- end }}
{{- with .Values.serve.adminToken.existingSecret }}
- name: GENSAR_SERVING__ADMIN_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.serve.adminToken.key }}}
{{- end }}
{{- end }}

{{/* Environment of a long-running GenSAR container: the ConfigMap, the secret references and
any extra variables. Call with (dict "ctx" $ "extra" (list (dict "name" ... "value" ...))). */}}
{{- define "gensar.containerEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "gensar.fullname" .ctx }}-config
{{- $secretEnv := include "gensar.secretEnv" .ctx }}
{{- if or $secretEnv .extra }}
env:
{{- with $secretEnv }}
{{- . | trim | nindent 2 }}
{{- end }}
{{- with .extra }}
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes --------------------------------------------------------------------------------- */}}

{{/* Writable paths under a read-only root filesystem: /tmp, state and cache. Call with
(dict "ctx" $ "artifacts" true "dataset" true) to add the artifact store and the dataset. */}}
{{- define "gensar.volumes" -}}
- name: tmp
  emptyDir: {}
- name: state
  emptyDir: {}
- name: cache
  emptyDir: {}
{{- if and .artifacts (eq .ctx.Values.artifacts.type "pvc") }}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-artifacts" (include "gensar.fullname" .ctx)) .ctx.Values.artifacts.persistence.existingClaim }}
{{- end }}
{{- if .dataset }}
- name: dataset
  persistentVolumeClaim:
    claimName: {{ required "dataset.existingClaim is required: the claim holding the dataset" .ctx.Values.dataset.existingClaim }}
    readOnly: true
{{- end }}
{{- if .ctx.Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .ctx.Values.kafka.tls.caSecret }}
    items:
      - {key: {{ .ctx.Values.kafka.tls.caKey }}, path: {{ .ctx.Values.kafka.tls.caKey }}}
{{- end }}
{{- end }}

{{- define "gensar.volumeMounts" -}}
- {name: tmp, mountPath: /tmp}
- {name: state, mountPath: {{ .ctx.Values.config.stateDir }}}
- {name: cache, mountPath: {{ .ctx.Values.config.cacheDir }}}
{{- if and .artifacts (eq .ctx.Values.artifacts.type "pvc") }}
- {name: artifacts, mountPath: {{ .ctx.Values.artifacts.mountPath }}}
{{- end }}
{{- if .dataset }}
- name: dataset
  mountPath: {{ .ctx.Values.dataset.mountPath }}
  readOnly: true
  {{- with .ctx.Values.dataset.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- if .ctx.Values.kafka.tls.caSecret }}
- {name: kafka-ca, mountPath: /etc/gensar/kafka-ca, readOnly: true}
{{- end }}
{{- end }}

{{/* An init container that holds a pod until the artifact store has the base model and an
identifier map (`gensar bootstrap --wait`): the learner driver and the serving pods cannot
start without them. */}}
{{- define "gensar.waitForBootstrap" -}}
- name: wait-for-bootstrap
  image: {{ include "gensar.image" .ctx }}
  imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
  command: [gensar]
  args: [bootstrap, --wait, {{ .ctx.Values.bootstrap.waitSeconds | quote }}, --name, {{ .ctx.Values.bootstrap.baseModel | quote }}]
  {{- include "gensar.containerEnv" (dict "ctx" .ctx) | nindent 2 }}
  resources:
    {{- toYaml .ctx.Values.bootstrap.waitResources | nindent 4 }}
  securityContext:
    {{- toYaml .ctx.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    {{- include "gensar.volumeMounts" (dict "ctx" .ctx "artifacts" true) | nindent 4 }}
{{- end }}

{{/* Probes: an httpGet probe from a values block with `enabled`. Call with
(dict "probe" .Values.streams.readinessProbe "path" "/" "port" "web"). */}}
{{- define "gensar.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* Guards that the schema cannot express (they compare two values) ------------------------- */}}
{{- define "gensar.validate" -}}
{{- $partitions := int .Values.kafka.partitions }}
{{- if .Values.streams.enabled }}
{{- if .Values.streams.autoscaling.enabled }}
{{- if gt (int .Values.streams.autoscaling.maxReplicas) $partitions }}
{{- fail (printf "streams.autoscaling.maxReplicas (%d) exceeds kafka.partitions (%d): a stream worker beyond the partition count gets no partition and idles" (int .Values.streams.autoscaling.maxReplicas) $partitions) }}
{{- end }}
{{- if gt (int .Values.streams.autoscaling.minReplicas) (int .Values.streams.autoscaling.maxReplicas) }}
{{- fail "streams.autoscaling.minReplicas exceeds streams.autoscaling.maxReplicas" }}
{{- end }}
{{- else if gt (int .Values.streams.replicas) $partitions }}
{{- fail (printf "streams.replicas (%d) exceeds kafka.partitions (%d): a stream worker beyond the partition count gets no partition and idles" (int .Values.streams.replicas) $partitions) }}
{{- end }}
{{- end }}
{{- if and (hasPrefix "SASL" .Values.kafka.securityProtocol) (not .Values.kafka.sasl.existingSecret) }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.existingSecret (a Secret with the SASL username and password)" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and .Values.kafka.sasl.mechanism (not (hasPrefix "SASL" .Values.kafka.securityProtocol)) }}
{{- fail "kafka.sasl.mechanism is set but kafka.securityProtocol is not SASL_PLAINTEXT or SASL_SSL" }}
{{- end }}
{{- range $group := list (dict "name" "serve.workers" "spec" .Values.serve.workers) (dict "name" "learner.cpuWorkers" "spec" .Values.learner.cpuWorkers) (dict "name" "learner.gpuWorkers" "spec" .Values.learner.gpuWorkers) }}
{{- $spec := $group.spec }}
{{- if or (lt (int $spec.replicas) (int $spec.minReplicas)) (gt (int $spec.replicas) (int $spec.maxReplicas)) }}
{{- fail (printf "%s.replicas (%d) must lie between minReplicas (%d) and maxReplicas (%d)" $group.name (int $spec.replicas) (int $spec.minReplicas) (int $spec.maxReplicas)) }}
{{- end }}
{{- end }}
{{- end }}
