{{/* The chart name, or nameOverride. */}}
{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: fullnameOverride, or the release name (plus the chart name unless it is in it). */}}
{{- define "tessera.fullname" -}}
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

{{- define "tessera.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels on every object of the release. */}}
{{- define "tessera.labels" -}}
helm.sh/chart: {{ include "tessera.chart" . }}
{{ include "tessera.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tessera
{{- end }}

{{/* Labels that select the operator Pods (immutable in a Deployment: never add to them). */}}
{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The Kubernetes ServiceAccount the operator runs as. */}}
{{- define "tessera.serviceAccountName" -}}
{{- default (include "tessera.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The Kopf peering object's name. */}}
{{- define "tessera.peeringName" -}}
{{- include "tessera.fullname" . }}
{{- end }}

{{/* Namespaces the operator watches when restricted: watchNamespaces plus the release namespace
(the issuer key Secret lives there and its changes arrive through the watch), one per line. */}}
{{- define "tessera.watchedNamespaces" -}}
{{- $all := append .Values.watchNamespaces .Release.Namespace | uniq | sortAlpha }}
{{- range $all }}
{{ . }}
{{- end }}
{{- end }}

{{/* Whether the operator serves the whole cluster ("true") or listed namespaces (""). */}}
{{- define "tessera.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/* The issuer's URL (TESSERA_ISSUER of both the operator and the issuer service). */}}
{{- define "tessera.issuerURL" -}}
{{- .Values.issuer | default (printf "https://tessera.%s.svc" .Release.Namespace) }}
{{- end }}

{{/* Labels that select the issuer service's Pods. */}}
{{- define "tessera.issuerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: issuer
{{- end }}

{{/* The Kubernetes ServiceAccount the issuer service runs as (its own, with its own RBAC). */}}
{{- define "tessera.issuerServiceAccountName" -}}
{{- printf "%s-issuer" (include "tessera.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The TLS Secret the issuer serves with: the user's, or the one the chart makes. */}}
{{- define "tessera.issuerTLSSecret" -}}
{{- .Values.issuerService.tls.secretName | default (printf "%s-issuer-tls" (include "tessera.fullname" .)) }}
{{- end }}

{{/* Standard labels on the issuer service's objects. */}}
{{- define "tessera.issuerLabels" -}}
helm.sh/chart: {{ include "tessera.chart" . }}
{{ include "tessera.issuerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tessera
{{- end }}
