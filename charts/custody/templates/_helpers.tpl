{{/*
The release's full name: the release name when it already says "custody"
(a release named custody gives the names `make run` uses: the
MutatingWebhookConfiguration custody, the Secret custody-ca, the Lease
custody-operator, the Service custody-webhook), else "<release>-custody".
Cluster-scoped objects (webhook configuration, admission policies, ClusterRole)
carry it, so two releases never share one.
*/}}
{{- define "custody.fullname" -}}
{{- if contains "custody" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-custody" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "custody.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "custody.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "custody.selectorLabels" -}}
app.kubernetes.io/name: custody
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "custody.labels" -}}
{{ include "custody.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The Service the API server calls the webhook through (CUSTODY_WEBHOOK_SERVICE). */}}
{{- define "custody.webhookServiceName" -}}
{{- printf "%s-webhook" (include "custody.fullname" .) -}}
{{- end -}}

{{- define "custody.identityServiceName" -}}
{{- printf "%s-identity" (include "custody.fullname" .) -}}
{{- end -}}

{{- define "custody.identityIssuer" -}}
{{- if .Values.identity.issuer -}}
{{- .Values.identity.issuer -}}
{{- else -}}
{{- printf "https://%s.%s.svc" (include "custody.identityServiceName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "custody.metricsServiceName" -}}
{{- printf "%s-metrics" (include "custody.fullname" .) -}}
{{- end -}}

{{/* The MutatingWebhookConfiguration the chart owns (CUSTODY_WEBHOOK_CONFIG_NAME). */}}
{{- define "custody.webhookConfigName" -}}
{{- include "custody.fullname" . -}}
{{- end -}}

{{/* The Secret holding the Custody CA (CUSTODY_CA_SECRET). */}}
{{- define "custody.caSecretName" -}}
{{- if eq .Values.ca.source "existingSecret" -}}
{{- required "ca.existingSecret is required when ca.source is existingSecret" .Values.ca.existingSecret -}}
{{- else -}}
{{- printf "%s-ca" (include "custody.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The leader-election Lease (CUSTODY_LEASE_NAME). */}}
{{- define "custody.leaseName" -}}
{{- printf "%s-operator" (include "custody.fullname" .) -}}
{{- end -}}

{{- define "custody.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The webhook's base URL without trailing slashes (the operator appends paths the same way). */}}
{{- define "custody.webhookUrl" -}}
{{- regexReplaceAll "/+$" .Values.webhook.url "" -}}
{{- end -}}

{{/*
clientConfig of one webhook: through the chart's Service by default, or
through webhook.url for an operator that runs outside the cluster. No
caBundle: the operator (CUSTODY_WEBHOOK_REGISTRATION=ca-bundle) patches it in
and keeps it current; the chart never sets it, so an upgrade cannot reset it.
Argument: (list $ "/admit/...").
*/}}
{{- define "custody.clientConfig" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
{{- if $root.Values.webhook.url -}}
url: {{ printf "%s%s" (include "custody.webhookUrl" $root) $path | quote }}
{{- else -}}
service:
  namespace: {{ $root.Release.Namespace }}
  name: {{ include "custody.webhookServiceName" $root }}
  port: 443
  path: {{ $path }}
{{- end -}}
{{- end -}}

{{/*
namespaceSelector of the pods and workloads webhooks: webhook.namespaceSelector
plus `kubernetes.io/metadata.name NotIn excludedNamespaces` (the same as
buildWebhookConfiguration in webhook/registration.ts).
*/}}
{{- define "custody.scopedNamespaceSelector" -}}
{{- $sel := .Values.webhook.namespaceSelector | default dict -}}
{{- $exprs := list -}}
{{- range ($sel.matchExpressions | default list) -}}
{{- $exprs = append $exprs . -}}
{{- end -}}
{{- if .Values.excludedNamespaces -}}
{{- $exprs = append $exprs (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" .Values.excludedNamespaces) -}}
{{- end -}}
{{- $out := dict -}}
{{- if $sel.matchLabels -}}
{{- $_ := set $out "matchLabels" $sel.matchLabels -}}
{{- end -}}
{{- if $exprs -}}
{{- $_ := set $out "matchExpressions" $exprs -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
Checks the schema cannot express; included by the Deployment.
defaultTtl: 5m..24h (the operator's parseTtl refuses anything else at start).
*/}}
{{- define "custody.validate" -}}
{{- $seconds := 0 -}}
{{- range regexFindAll "[0-9]+[hms]" .Values.defaultTtl -1 -}}
{{- $n := regexFind "[0-9]+" . | atoi -}}
{{- if hasSuffix "h" . }}{{ $seconds = add $seconds (mul $n 3600) }}{{ else if hasSuffix "m" . }}{{ $seconds = add $seconds (mul $n 60) }}{{ else }}{{ $seconds = add $seconds $n }}{{ end -}}
{{- end -}}
{{- if or (lt $seconds 300) (gt $seconds 86400) -}}
{{- fail (printf "defaultTtl: %q must be between 5m and 24h" .Values.defaultTtl) -}}
{{- end -}}
{{- if and .Values.leaderElection.enabled (ge (int .Values.leaderElection.renewDeadlineSeconds) (int .Values.leaderElection.leaseDurationSeconds)) -}}
{{- fail (printf "leaderElection.renewDeadlineSeconds (%v) must be less than leaderElection.leaseDurationSeconds (%v)" .Values.leaderElection.renewDeadlineSeconds .Values.leaderElection.leaseDurationSeconds) -}}
{{- end -}}
{{- if and .Values.leaderElection.enabled (le (int .Values.leaderElection.renewDeadlineSeconds) (int .Values.leaderElection.retryPeriodSeconds)) -}}
{{- fail (printf "leaderElection.renewDeadlineSeconds (%v) must be greater than leaderElection.retryPeriodSeconds (%v)" .Values.leaderElection.renewDeadlineSeconds .Values.leaderElection.retryPeriodSeconds) -}}
{{- end -}}
{{- end -}}
