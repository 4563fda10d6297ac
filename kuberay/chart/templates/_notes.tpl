{{/* The text NOTES.txt prints after install/upgrade (a define, so that tests can render it). */}}
{{- define "classifier.notes" -}}
{{- $ns := .Release.Namespace -}}
The image classifier is installed in mode={{ .Values.mode }}.
{{ if eq .Values.mode "rayservice" }}
{{- $name := include "classifier.rayServiceName" . }}
Wait for the RayService (KubeRay creates the cluster, then deploys serveConfigV2):
  kubectl -n {{ $ns }} get rayservice {{ $name }} -w
{{- if include "classifier.incrementalUpgrade" . }}

With NewClusterWithIncrementalUpgrade KubeRay serves through its own Gateway {{ $name }}-gateway
(class {{ .Values.ray.upgradeStrategy.clusterUpgradeOptions.gatewayClassName }}, HTTP on port 80) and HTTPRoute {{ $name }}-httproute, in front of one
Service per RayCluster (<raycluster>-serve-svc); there is no {{ $name }}-serve-svc. The Gateway's address:
  kubectl -n {{ $ns }} get gateway {{ $name }}-gateway -o jsonpath='{.status.addresses[0].value}'

Or predict through the serving cluster's own Service:
  CLUSTER=$(kubectl -n {{ $ns }} get rayservice {{ $name }} -o jsonpath='{.status.activeServiceStatus.rayClusterName}')
  kubectl -n {{ $ns }} port-forward "svc/$CLUSTER-serve-svc" 8000:serve
{{- else }}

Then predict a picture:
  kubectl -n {{ $ns }} port-forward svc/{{ include "classifier.serveServiceName" . }} 8000:serve
{{- end }}
{{- else }}
Wait for the pods to load the model:
  kubectl -n {{ $ns }} rollout status deployment/{{ include "classifier.fullname" . }}

Then predict a picture:
  kubectl -n {{ $ns }} port-forward svc/{{ include "classifier.serveServiceName" . }} 8000:serve
{{- end }}
  curl -F file=@cat.png http://127.0.0.1:8000/predict
{{- if and (eq .Values.mode "rayservice") .Values.ray.gcsFaultTolerance.enabled }}
{{- $name := include "classifier.rayServiceName" . }}

Uninstall (GCS fault tolerance is on): delete the RayService first and wait for its Ray clusters, so that
KubeRay's Redis cleanup Job runs while this release's ServiceAccount and NetworkPolicies still exist;
then the release:
  kubectl -n {{ $ns }} delete rayservice {{ $name }}
  kubectl -n {{ $ns }} wait --for=delete raycluster -l ray.io/originated-from-cr-name={{ $name }} --timeout=10m
  helm -n {{ $ns }} uninstall {{ .Release.Name }}
{{- end }}

Docs: docs/SETUP.md, docs/OPERATIONS.md, docs/TROUBLESHOOTING.md.
{{- end -}}
