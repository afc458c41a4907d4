{{/* helm/mercato/templates/_helpers.tpl: names, labels and the environment every template
     shares. A service's objects are named <fullname>-<service> and labelled with
     app.kubernetes.io/component=<service>. */}}

{{- define "mercato.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mercato.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mercato
{{- end -}}

{{/* Selector labels of one service: (dict "root" $ "name" "user") */}}
{{- define "mercato.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "mercato.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The in-cluster URL of a service: (dict "root" $ "name" "user") */}}
{{- define "mercato.serviceURL" -}}
{{- $svc := index .root.Values.services .name -}}
{{- printf "http://%s-%s:%d" (include "mercato.fullname" .root) .name (int $svc.port) -}}
{{- end -}}

{{/* The plain (non-secret) environment of one service, as a map: the shared config, where the
     others are, how tokens are verified, then the service's own env. */}}
{{- define "mercato.configEnv" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := index $root.Values.services $name -}}
{{- $env := dict -}}
{{- range $k, $v := $root.Values.config }}{{ $_ := set $env $k (toString $v) }}{{ end -}}
{{- range $other := list "user" "product" "order" "payment" "notification" -}}
{{- $_ := set $env (printf "%s_SERVICE_URL" (upper $other)) (include "mercato.serviceURL" (dict "root" $root "name" $other)) -}}
{{- end -}}
{{- if eq $name "user" -}}
{{- $_ := set $env "JWT_PRIVATE_KEY_FILE" (printf "/var/run/secrets/mercato/jwt/%s" $root.Values.jwt.key) -}}
{{- else if ne $name "gateway" -}}
{{- $_ := set $env "JWKS_URL" (printf "%s/.well-known/jwks.json" (include "mercato.serviceURL" (dict "root" $root "name" "user"))) -}}
{{- end -}}
{{- range $k, $v := $svc.env }}{{ if ne (toString $v) "" }}{{ $_ := set $env $k (toString $v) }}{{ end }}{{ end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Env entries of one service read from existingSecret (never a literal value). */}}
{{- define "mercato.secretEnv" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values.services .name -}}
{{- range $var, $key := $svc.secretEnv }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- end -}}

{{/* SHUTDOWN_TIMEOUT_MS of a service, in whole seconds rounded up. */}}
{{- define "mercato.drainSeconds" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $ms := int (default .root.Values.config.SHUTDOWN_TIMEOUT_MS (index (default dict $svc.env) "SHUTDOWN_TIMEOUT_MS")) -}}
{{- div (add $ms 999) 1000 -}}
{{- end -}}
