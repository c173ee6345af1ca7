{{/*
Shared templates. Every per-service object is made from one service's resolved block (see
"nexus.services"); adding a service is a values block, never a template.
*/}}

{{- define "nexus.fullname" -}}
{{- if contains "nexus" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-nexus" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The name of one service's objects (Deployment, Service, HPA...). ctx: dict root svc */}}
{{- define "nexus.name" -}}
{{- printf "%s-%s" (include "nexus.fullname" .root) .svc.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nexus.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nexus
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Labels that select every Nexus pod of this release. */}}
{{- define "nexus.releaseSelector" -}}
app.kubernetes.io/name: nexus
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels that select one service's pods. ctx: dict root svc */}}
{{- define "nexus.selector" -}}
{{ include "nexus.releaseSelector" .root }}
app.kubernetes.io/component: {{ .svc.name }}
{{- end -}}

{{- define "nexus.labels" -}}
{{ include "nexus.selector" . }}
{{ include "nexus.chartLabels" .root }}
{{- end -}}

{{/* Deep-merges dict `src` into dict `dst` in place: maps key by key, anything else replaced
(false and 0 too, which sprig's mergeOverwrite would skip). */}}
{{- define "nexus.mergeInto" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- $current := get $dst $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- include "nexus.mergeInto" (dict "dst" $current "src" $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Fills dict `out` with name -> resolved block (serviceDefaults merged with the service's
block, its name and profile added) for every enabled service. ctx: dict root out */}}
{{- define "nexus.services" -}}
{{- $root := .root -}}
{{- range $name, $block := $root.Values.services -}}
{{- $svc := deepCopy $root.Values.serviceDefaults -}}
{{- include "nexus.mergeInto" (dict "dst" $svc "src" (deepCopy ($block | default dict))) -}}
{{- if $svc.enabled -}}
{{- $_ := set $svc "name" $name -}}
{{- $profile := get $root.Values.profiles $svc.profile -}}
{{- if not $profile -}}
{{- fail (printf "services.%s.profile: no profile %q in profiles (%s)" $name $svc.profile (keys $root.Values.profiles | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $_ := set $svc "profileValues" $profile -}}
{{- $_ := set $.out $name $svc -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "nexus.image" -}}
{{- $svc := .svc -}}
{{- $repository := $svc.image.repository | default (printf "nexus/%s" $svc.name) -}}
{{- with .root.Values.global.imageRegistry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository -}}
{{- end -}}
{{- $tag := $svc.image.tag | default (printf "%s%s" .root.Chart.AppVersion $svc.profileValues.imageTagSuffix) -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{- define "nexus.natsUrl" -}}
{{- .Values.nats.url | default (printf "nats://%s-nats:4222" .Release.Name) -}}
{{- end -}}

{{- define "nexus.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "nexus.fullname" .) -}}
{{- end -}}

{{- define "nexus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "nexus.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* An env value as text: numbers as written (helm reads every number as a float). */}}
{{- define "nexus.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* The env prefix of a service's own settings: NEXUS_<NAME>_ */}}
{{- define "nexus.prefix" -}}
{{- printf "NEXUS_%s_" (.name | upper | replace "-" "_") -}}
{{- end -}}

{{/* A gRPC service's backend address for the gateway. ctx: dict root svc */}}
{{- define "nexus.address" -}}
{{- printf "%s:%d" (include "nexus.name" .) (int .root.Values.ports.grpc) -}}
{{- end -}}

{{/* The gateway's NEXUS_GATEWAY_BACKENDS: every enabled gRPC service. ctx: dict root services */}}
{{- define "nexus.backends" -}}
{{- $backends := dict -}}
{{- range $name, $svc := .services -}}
{{- if eq $svc.kind "grpc" -}}
{{- $_ := set $backends $name (include "nexus.address" (dict "root" $.root "svc" $svc)) -}}
{{- end -}}
{{- end -}}
{{- toJson $backends -}}
{{- end -}}

{{/* Seconds a pod gets to stop: preStop pause + the service's drain + a margin. */}}
{{- define "nexus.terminationGrace" -}}
{{- add .preStopSeconds .shutdownGraceSeconds .terminationMarginSeconds -}}
{{- end -}}

{{/* The container's env. ctx: dict root svc services */}}
{{- define "nexus.env" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $prefix := include "nexus.prefix" $svc -}}
- name: NEXUS_NATS_URL
  value: {{ include "nexus.natsUrl" $root | quote }}
- name: NEXUS_LOG_JSON
  value: {{ $root.Values.logJson | quote }}
- name: NEXUS_LOG_LEVEL
  value: {{ $root.Values.logLevel | quote }}
- name: NEXUS_OTLP_ENDPOINT
  value: {{ $root.Values.otlpEndpoint | quote }}
- name: NEXUS_AUTH_ENABLED
  value: {{ $root.Values.authEnabled | quote }}
- name: NEXUS_ENVIRONMENT
  value: {{ $root.Values.environment | default $root.Release.Namespace | quote }}
{{- if eq $svc.kind "gateway" }}
- name: {{ $prefix }}HOST
  value: "0.0.0.0"
- name: {{ $prefix }}PORT
  value: {{ $root.Values.ports.http | quote }}
- name: {{ $prefix }}BACKENDS
  value: {{ include "nexus.backends" . | quote }}
{{- else }}
- name: {{ $prefix }}GRPC_HOST
  value: "0.0.0.0"
- name: {{ $prefix }}GRPC_PORT
  value: {{ $root.Values.ports.grpc | quote }}
- name: {{ $prefix }}METRICS_PORT
  value: {{ $root.Values.ports.metrics | quote }}
{{- if $svc.callsServices }}
- name: {{ $prefix }}BACKENDS
  value: {{ include "nexus.backends" . | quote }}
{{- end }}
{{- end }}
- name: {{ $prefix }}SHUTDOWN_GRACE_S
  value: {{ include "nexus.envValue" $svc.shutdownGraceSeconds | quote }}
{{- range $key, $value := $svc.settings }}
- name: {{ printf "%s%s" $prefix ($key | upper) }}
  value: {{ include "nexus.envValue" $value | quote }}
{{- end }}
{{- if $svc.configFile.env }}
- name: {{ $svc.configFile.env }}
  value: {{ printf "/etc/nexus/%s/%s" $svc.name $svc.configFile.name | quote }}
{{- end }}
{{- range $key, $value := $svc.env }}
- name: {{ $key }}
  value: {{ include "nexus.envValue" $value | quote }}
{{- end }}
{{- range $key, $need := $svc.secretEnv }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ include "nexus.secretName" $root }}
      key: {{ $key }}
      optional: {{ eq $need "optional" }}
{{- end }}
{{- end -}}

{{/* The probes: native gRPC health for services, /healthz and /readyz for the gateway. */}}
{{- define "nexus.probes" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{ $kind }}Probe:
  {{- if eq $svc.kind "gateway" }}
  httpGet:
    path: {{ ternary "/readyz" "/healthz" (eq $kind "readiness") }}
    port: http
  {{- else }}
  grpc:
    port: {{ $root.Values.ports.grpc }}
  {{- end }}
  {{- toYaml (get $svc.probes $kind) | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The resources, with the profile's GPUs in the limits. */}}
{{- define "nexus.resources" -}}
{{- $resources := deepCopy .svc.resources -}}
{{- $gpus := int .svc.profileValues.gpus -}}
{{- if gt $gpus 0 -}}
{{- $limits := $resources.limits | default dict -}}
{{- $_ := set $limits "nvidia.com/gpu" $gpus -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* Checks that what the pods will read from the Secret is there when the chart makes it. */}}
{{- define "nexus.checkSecrets" -}}
{{- $root := .root -}}
{{- if not $root.Values.secrets.existingSecret -}}
{{- range $name, $svc := .services -}}
{{- range $key, $need := $svc.secretEnv -}}
{{- if and (eq $need "required") (not (get $root.Values.secrets.values $key)) -}}
{{- fail (printf "services.%s needs the secret %s: set secrets.existingSecret to the name of a Secret that holds it (docs/deploy.md), or pass secrets.values.%s at install time" $name $key $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
