{{- define "custody.fullname" -}}
{{- printf "%s-custody" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "custody.serviceAccountName" -}}
{{- default (include "custody.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}
{{- define "custody.labels" -}}
app.kubernetes.io/name: custody
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
