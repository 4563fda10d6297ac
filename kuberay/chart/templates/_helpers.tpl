{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "classifier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "classifier.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The RayService's name: the full name, checked against what KubeRay v1.6.2 accepts
(ValidateRayServiceMetadata: a DNS-1035 label of at most 47 characters, so that the RayCluster names
"<name>-xxxxx" stay within 53). The render fails rather than truncating: the RayService name is the
prefix of every name KubeRay derives from it (RayClusters, <name>-head-svc, <name>-serve-svc, pods), and
a silently shortened one would differ from the release's other resources and from what the docs and
scripts compute from the release name.
*/}}
{{- define "classifier.rayServiceName" -}}
{{- $name := include "classifier.fullname" . -}}
{{- if gt (len $name) 47 -}}
{{- fail (printf "mode rayservice: the RayService would be named %q (%d characters), but KubeRay accepts at most 47; install with a shorter release name (a release name containing %q is used as is) or set fullnameOverride" $name (len $name) .Chart.Name) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "mode rayservice: the RayService would be named %q, but KubeRay accepts only a DNS-1035 label (starting with a letter); use another release name or set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* Whether KubeRay runs NewClusterWithIncrementalUpgrade (RayServiceIncrementalUpgrade gate, on by
default in 1.6.2): then it creates its own Gateway and HTTPRoute and one serve Service per RayCluster. */}}
{{- define "classifier.incrementalUpgrade" -}}
{{- if and (eq .Values.mode "rayservice") (eq .Values.ray.upgradeStrategy.type "NewClusterWithIncrementalUpgrade") -}}
true
{{- end -}}
{{- end -}}

{{/*
With incremental upgrades KubeRay serves through Gateway <name>-gateway and HTTPRoute <name>-httproute,
whose backends are the per-cluster Services <raycluster>-serve-svc; <name>-serve-svc is never created and
spec.serveService is ignored. The chart's own front doors would point at nothing: refuse them.
*/}}
{{- define "classifier.checkIncrementalFrontDoors" -}}
{{- if include "classifier.incrementalUpgrade" . -}}
{{- range $value, $on := dict "httpRoute.enabled" .Values.httpRoute.enabled "ingress.enabled" .Values.ingress.enabled "loadBalancer.enabled" .Values.loadBalancer.enabled -}}
{{- if $on -}}
{{- fail (printf "%s is not possible with ray.upgradeStrategy.type=NewClusterWithIncrementalUpgrade: KubeRay then creates no %s-serve-svc but its own Gateway %s-gateway (class %s, HTTP listener on port 80) and HTTPRoute %s-httproute in front of one serve Service per RayCluster; expose that Gateway instead (docs/OPERATIONS.md)" $value (include "classifier.rayServiceName" $) (include "classifier.rayServiceName" $) $.Values.ray.upgradeStrategy.clusterUpgradeOptions.gatewayClassName (include "classifier.rayServiceName" $)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A name derived from the full name with a suffix, still within 63 characters. */}}
{{- define "classifier.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "classifier.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{- define "classifier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades. */}}
{{- define "classifier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "classifier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Standard labels on every resource. */}}
{{- define "classifier.labels" -}}
helm.sh/chart: {{ include "classifier.chart" . }}
{{ include "classifier.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ray-serve-image-classifier
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels plus a component. Usage: include "classifier.componentLabels" (list . "serve") */}}
{{- define "classifier.componentLabels" -}}
{{ include "classifier.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* A map of annotations with every value a string (`--set a=true` would otherwise render a boolean,
which the API server refuses for an annotation). */}}
{{- define "classifier.stringMap" -}}
{{- $strings := dict -}}
{{- range $key, $value := . -}}
{{- $_ := set $strings $key (toString $value) -}}
{{- end -}}
{{- toYaml $strings -}}
{{- end -}}

{{- define "classifier.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "classifier.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "classifier.headServiceAccountName" -}}
{{- include "classifier.suffixed" (list . "ray-head") -}}
{{- end -}}

{{- define "classifier.workloadServiceAccountName" -}}
{{- include "classifier.suffixed" (list . "workload") -}}
{{- end -}}

{{- define "classifier.settingsName" -}}
{{- include "classifier.suffixed" (list . "settings") -}}
{{- end -}}

{{/* The ConfigMap with the Serve config the pods run in mode=deployment. */}}
{{- define "classifier.serveConfigName" -}}
{{- include "classifier.suffixed" (list . "serve-config") -}}
{{- end -}}

{{/* The Secret holding the Ray auth token in mode=deployment. */}}
{{- define "classifier.authSecretName" -}}
{{- default (include "classifier.suffixed" (list . "ray-auth")) .Values.secret.existingSecret -}}
{{- end -}}

{{/* The Service that fronts the Serve proxies: KubeRay's <name>-serve-svc or the chart's own. */}}
{{- define "classifier.serveServiceName" -}}
{{- if eq .Values.mode "rayservice" -}}
{{- printf "%s-serve-svc" (include "classifier.rayServiceName" .) -}}
{{- else -}}
{{- include "classifier.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* The serve Service's HTTP port (routes and port-forwards target it). In mode rayservice KubeRay copies
the head's `serve` port, or takes the chart's serveService port when the LoadBalancer is on. */}}
{{- define "classifier.serveServicePort" -}}
{{- if ne .Values.mode "rayservice" -}}
{{- .Values.service.port -}}
{{- else if .Values.loadBalancer.enabled -}}
{{- .Values.loadBalancer.port -}}
{{- else -}}
{{- .Values.ray.servePort -}}
{{- end -}}
{{- end -}}

{{/*
serveConfigV2: the repo's serve_config.yaml (files/serve_config.yaml is a symlink to it), verbatim when
no overrides are set; otherwise parsed, each deploymentOverrides item applied to the deployment of
that name (`unset` keys removed, `set` merged deep), and re-serialised.
*/}}
{{- define "classifier.serveConfig" -}}
{{- $raw := .Files.Get "files/serve_config.yaml" -}}
{{- if not $raw -}}
{{- fail "files/serve_config.yaml is missing or empty: it must be a symlink to the repo's serve_config.yaml" -}}
{{- end -}}
{{- if not .Values.serveConfig.deploymentOverrides -}}
{{- $raw -}}
{{- else -}}
{{- $cfg := fromYaml $raw -}}
{{- range $override := .Values.serveConfig.deploymentOverrides -}}
{{- $found := false -}}
{{- range $app := $cfg.applications -}}
{{- range $dep := (default list $app.deployments) -}}
{{- if eq $dep.name $override.name -}}
{{- $found = true -}}
{{- range $key := (default list $override.unset) -}}
{{- $_ := unset $dep $key -}}
{{- end -}}
{{- $_ := mergeOverwrite $dep (deepCopy (default dict $override.set)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "serveConfig.deploymentOverrides: no deployment named %q in serve_config.yaml" $override.name) -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
{{- end -}}

{{/* Writable emptyDirs for the read-only root filesystem. */}}
{{- define "classifier.writableVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolumeSizeLimit }}
- name: ray-logs
  emptyDir:
    sizeLimit: {{ .Values.tmpVolumeSizeLimit }}
- name: shared-mem
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shmSizeLimit }}
{{- end -}}

{{- define "classifier.writableVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: ray-logs
  mountPath: /tmp/ray
- name: shared-mem
  mountPath: /dev/shm
{{- end -}}

{{/* Environment common to every app container. */}}
{{- define "classifier.env" -}}
- name: TORCH_HOME
  value: {{ .Values.torchHome | quote }}
- name: RAY_METRICS_PORT
  value: {{ .Values.ray.metricsPort | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "classifier.envFrom" -}}
- configMapRef:
    name: {{ include "classifier.settingsName" . }}
{{- end -}}
