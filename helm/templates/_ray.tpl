{{/* Ray pod templates shared by the serving RayService and the learner RayCluster.

KubeRay keeps the first container as the Ray container, replaces its command with `ray start`
(through `bash -lc`, so the image puts its virtualenv on the login PATH) and injects wget-based
probes unless probes are given; the image has no wget, so every Ray container gets the httpGet
probes below, on the health endpoints Ray itself serves:
  8265/api/gcs_healthz          head: the GCS answers (liveness)
  52365/api/local_raylet_healthz every node: the raylet answers
  8000/-/healthz                 serving workers: the Serve proxy routes traffic (readiness) */}}

{{- define "gensar.rayProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .initialDelaySeconds | default 10 }}
periodSeconds: 5
timeoutSeconds: 5
failureThreshold: {{ .failureThreshold }}
{{- end }}

{{/* One Ray pod template. Call with (dict "ctx" $ "component" "serve" "node" "head"|"worker"
"group" <values of the group> "serve" <bool: this cluster runs Ray Serve> "gpu" <gpu values or nil>). */}}
{{- define "gensar.rayPodTemplate" -}}
{{- $ctx := .ctx }}
{{- $group := .group }}
{{- $isHead := eq .node "head" }}
{{- $autoscaling := $ctx.Values.ray.autoscaling.enabled }}
metadata:
  labels:
    {{- include "gensar.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
  annotations:
    checksum/config: {{ include "gensar.configChecksum" $ctx }}
spec:
  {{- if and $isHead $autoscaling }}
  # The autoscaler sidecar needs the API: a dedicated account with a narrow Role (rbac.yaml).
  serviceAccountName: {{ include "gensar.rayHeadServiceAccountName" $ctx }}
  automountServiceAccountToken: true
  {{- else }}
  serviceAccountName: {{ include "gensar.serviceAccountName" $ctx }}
  automountServiceAccountToken: false
  {{- end }}
  {{- with $ctx.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $ctx.Values.podSecurityContext | nindent 4 }}
  {{- if .serve }}
  initContainers:
    {{- include "gensar.waitForBootstrap" (dict "ctx" $ctx) | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-{{ .node }}
      image: {{ include "gensar.image" $ctx }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      {{- include "gensar.containerEnv" (dict "ctx" $ctx) | nindent 6 }}
      ports:
        {{- if $isHead }}
        - {name: gcs-server, containerPort: 6379, protocol: TCP}
        - {name: dashboard, containerPort: 8265, protocol: TCP}
        - {name: client, containerPort: 10001, protocol: TCP}
        {{- end }}
        {{- if .serve }}
        - {name: serve, containerPort: {{ $ctx.Values.serve.port }}, protocol: TCP}
        {{- end }}
        - {name: metrics, containerPort: 8080, protocol: TCP}
      {{- if $isHead }}
      livenessProbe:
        {{- include "gensar.rayProbe" (dict "path" "/api/gcs_healthz" "port" 8265 "initialDelaySeconds" 30 "failureThreshold" 120) | nindent 8 }}
      readinessProbe:
        {{- include "gensar.rayProbe" (dict "path" "/api/local_raylet_healthz" "port" 52365 "failureThreshold" 10) | nindent 8 }}
      {{- else }}
      livenessProbe:
        {{- include "gensar.rayProbe" (dict "path" "/api/local_raylet_healthz" "port" 52365 "initialDelaySeconds" 30 "failureThreshold" 120) | nindent 8 }}
      readinessProbe:
        {{- if .serve }}
        # One failure takes the worker out of the serving endpoints (KubeRay's own choice too).
        {{- include "gensar.rayProbe" (dict "path" "/-/healthz" "port" "serve" "failureThreshold" 1) | nindent 8 }}
        {{- else }}
        {{- include "gensar.rayProbe" (dict "path" "/api/local_raylet_healthz" "port" 52365 "failureThreshold" 10) | nindent 8 }}
        {{- end }}
      {{- end }}
      resources:
        {{- if .gpu }}
        {{- $gpu := dict .gpu.resourceName (.gpu.gpusPerWorker | toString) }}
        requests:
          {{- toYaml (merge (dict) $gpu $group.resources.requests) | nindent 10 }}
        limits:
          {{- toYaml (merge (dict) $gpu $group.resources.limits) | nindent 10 }}
        {{- else }}
        {{- toYaml $group.resources | nindent 8 }}
        {{- end }}
      securityContext:
        {{- toYaml $ctx.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        {{- include "gensar.volumeMounts" (dict "ctx" $ctx "artifacts" true "dataset" true) | nindent 8 }}
        # Ray's object store lives in shared memory.
        - {name: shared-mem, mountPath: /dev/shm}
  volumes:
    {{- include "gensar.volumes" (dict "ctx" $ctx "artifacts" true "dataset" true) | nindent 4 }}
    - name: shared-mem
      emptyDir:
        medium: Memory
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The in-tree autoscaler sidecar, hardened like every other container. */}}
{{- define "gensar.rayAutoscaler" -}}
{{- if .Values.ray.autoscaling.enabled }}
enableInTreeAutoscaling: true
autoscalerOptions:
  idleTimeoutSeconds: {{ .Values.ray.autoscaling.idleTimeoutSeconds }}
  upscalingMode: Default
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  env:
    - {name: HOME, value: /tmp}
  resources:
    {{- toYaml .Values.ray.autoscaling.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - {name: tmp, mountPath: /tmp}
{{- else }}
enableInTreeAutoscaling: false
{{- end }}
{{- end }}
