{{/* The release's full name: the release name, or "<release>-modelplane". */}}
{{- define "modelplane.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelplane.selectorLabels" -}}
app.kubernetes.io/name: modelplane-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelplane.labels" -}}
{{ include "modelplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: modelplane
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "modelplane.serviceAccountName" -}}
{{- default (include "modelplane.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The operator's permissions: exactly what it does, for a ClusterRole or each Role. */}}
{{- define "modelplane.rules" -}}
# Watch ModelDeployments. Never written: retries are the operator's own, so kopf
# keeps no records on them (the status has its own rule below).
- apiGroups: [modelplane.io]
  resources: [modeldeployments]
  verbs: [list, watch]
- apiGroups: [modelplane.io]
  resources: [modeldeployments/status]
  verbs: [patch]
# Children carry blockOwnerDeletion; where the OwnerReferencesPermissionEnforcement
# admission plugin runs (OpenShift), that needs update on the owner's finalizers.
- apiGroups: [modelplane.io]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# ModelConsumers likewise: watched, and their status written.
- apiGroups: [modelplane.io]
  resources: [modelconsumers]
  verbs: [list, watch]
- apiGroups: [modelplane.io]
  resources: [modelconsumers/status]
  verbs: [patch]
# A consumer's key Secret carries blockOwnerDeletion too.
- apiGroups: [modelplane.io]
  resources: [modelconsumers/finalizers]
  verbs: [update]
# Consumers' keys: the operator creates each key Secret, reads it back by the name the
# ModelConsumer gives, and patches it to rotate the key. No list or watch: it cannot find
# or follow Secrets it was not told the name of, and it never writes one it did not create.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
# The children: server-side apply creates and updates them (create + patch). A canary's
# Deployment and Service are deleted when it is promoted or removed.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# KEDA (autoscaling.engine keda), its HTTP add-on (scale to zero) and Gateway API
# (spec.route): the same, for kinds their own CRDs add; granted whether installed or not.
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [http.keda.sh]
  resources: [httpscaledobjects]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, create, patch, delete]
# Turning autoscaling or the disruption budget off deletes them.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# A restricted model's access description (key digests, grants, limits; never a key);
# deleted when the model is opened.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
# Pods are read only, for status (unschedulable, model fetch failing).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Warning events on ModelDeployments and ModelConsumers; a repeat counts on the same Event.
- apiGroups: [""]
  resources: [events]
  verbs: [get, create, patch]
{{- end -}}
