{{/*
Named templates of the crucible chart. Each one yields a single scalar, so every template that
uses them stays plain YAML once its `{{ ... }}` expressions are replaced by values (the unit tests
rely on this; see helm/README.md).
*/}}

{{/* The chart's name and version, for the helm.sh/chart label. */}}
{{- define "crucible.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The namespace of load pods and Chaos Mesh experiments: crucible.load.namespace, or the
release namespace when it is empty. */}}
{{- define "crucible.loadNamespace" -}}
{{- .Values.crucible.load.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* The namespace of the Pushgateway's Service, for the ServiceMonitor. */}}
{{- define "crucible.serviceMonitorNamespace" -}}
{{- .Values.crucible.prometheus.serviceMonitor.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* Crucible's image reference, repository:tag. */}}
{{- define "crucible.image" -}}
{{- printf "%s:%s" .Values.crucible.image.repository (toString .Values.crucible.image.tag) -}}
{{- end -}}

{{/* The k6 image reference, repository:tag. */}}
{{- define "crucible.k6Image" -}}
{{- printf "%s:%s" .Values.crucible.k6Image.repository (toString .Values.crucible.k6Image.tag) -}}
{{- end -}}
