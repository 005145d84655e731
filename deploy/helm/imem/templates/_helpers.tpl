{{/* Names and labels. */}}
{{- define "imem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imem.fullname" -}}
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

{{- define "imem.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "imem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component (triton or gateway): include "imem.selectorLabels" (list . "triton") */}}
{{- define "imem.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "imem.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "imem.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "imem.secretName" -}}
{{- default (printf "%s-secrets" (include "imem.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* Whether this release has a Secret to read from (created here or named by the user). */}}
{{- define "imem.hasSecret" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.adminKey .Values.secrets.qdrantApiKey .Values.secrets.gatewayKeysFile }}true{{ end }}
{{- end }}

{{/* The Qdrant chart's fullname (its own helper's logic, for the names of its Service and Secret). */}}
{{- define "imem.qdrantFullname" -}}
{{- $q := .Values.qdrant | default dict }}
{{- if $q.fullnameOverride }}
{{- $q.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "qdrant" $q.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Qdrant server the memory uses: this release's Qdrant, an external one, or none (embedded store). */}}
{{- define "imem.qdrantUrl" -}}
{{- if .Values.qdrant.enabled }}
{{- printf "http://%s:6333" (include "imem.qdrantFullname" .) }}
{{- else }}
{{- .Values.config.QDRANT_URL | default "" }}
{{- end }}
{{- end }}

{{/* The Triton Service name (gRPC on 8001 for the gateway). */}}
{{- define "imem.tritonService" -}}
{{- printf "%s-triton" (include "imem.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Refuses configurations that would lose or corrupt memory. Included by every workload template, so
`helm template` / `helm install` fail before anything is applied.
*/}}
{{- define "imem.validate" -}}
{{- $replicas := int .Values.triton.replicas }}
{{- if and (gt $replicas 1) (not .Values.qdrant.enabled) (not .Values.config.QDRANT_URL) }}
{{- fail (printf "triton.replicas=%d needs a Qdrant server (qdrant.enabled=true or config.QDRANT_URL): the embedded store (Qdrant Edge) has exactly one owner, and replicas share memory only through a Qdrant server" $replicas) }}
{{- end }}
{{- if and .Values.qdrant.enabled .Values.config.QDRANT_URL }}
{{- fail "config.QDRANT_URL and qdrant.enabled are both set: choose this release's Qdrant (qdrant.enabled) or an external server (config.QDRANT_URL with qdrant.enabled=false)" }}
{{- end }}
{{- if and .Values.qdrant.enabled (not .Values.qdrant.apiKey) }}
{{- fail "qdrant.apiKey must be set (true to generate one, a string, or a valueFrom.secretKeyRef map): the Qdrant server must not accept unauthenticated clients" }}
{{- end }}
{{- if and .Values.triton.weights.existingClaim .Values.triton.weights.hostPath }}
{{- fail "set one of triton.weights.existingClaim and triton.weights.hostPath, not both" }}
{{- end }}
{{- if not (or .Values.triton.weights.existingClaim .Values.triton.weights.hostPath) }}
{{- fail "the model weights must come from triton.weights.existingClaim or triton.weights.hostPath (they are never in the image)" }}
{{- end }}
{{- if and .Values.secrets.adminKey (not (regexMatch "^[A-Za-z0-9._~-]+$" .Values.secrets.adminKey)) }}
{{- fail "secrets.adminKey may hold only letters, digits and . _ ~ - (it is part of a Triton flag)" }}
{{- end }}
{{- end }}

{{/* QDRANT_API_KEY for the Triton pods, as an env entry (nothing when there is no key to give). */}}
{{- define "imem.qdrantApiKeyEnv" -}}
{{- if .Values.qdrant.enabled }}
{{- $key := .Values.qdrant.apiKey }}
- name: QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
{{- if and (kindIs "map" $key) $key.valueFrom }}
      name: {{ $key.valueFrom.secretKeyRef.name }}
      key: {{ $key.valueFrom.secretKeyRef.key }}
{{- else }}
      name: {{ include "imem.qdrantFullname" . }}-apikey
      key: api-key
{{- end }}
{{- else if and .Values.config.QDRANT_URL (include "imem.hasSecret" .) }}
- name: QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "imem.secretName" . }}
      key: QDRANT_API_KEY
      optional: true
{{- end }}
{{- end }}
