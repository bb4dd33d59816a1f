{{/*
One Deployment of kamus. Arguments (a dict):
  root       the chart's context
  component  encryptor | decryptor | controller
  image      encryptor | decryptor (the controller runs from the decryptor image)
  replicas   the replica count
  port       the container port
  health     the liveness probe's path
  ready      the readiness probe's path
  env        extra env entries (a list)
  serves     whether the port serves the API (TLS applies), or only health and metrics
  publicKeys whether to mount the public key bundle ConfigMap (optional: it may not exist yet)
*/}}
{{- define "kamus.workload" -}}
{{- $root := .root -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $tls := and $root.Values.tls.enabled .serves -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "kamus.name" $ctx }}
  labels:
    {{- include "kamus.labels" $ctx | nindent 4 }}
spec:
  {{- if not (and $root.Values.autoscale.enabled .serves) }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "kamus.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      annotations:
        {{- include "kamus.checksums" $ctx | nindent 8 }}
        {{- with $root.Values.pod.annotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      labels:
        {{- include "kamus.selectorLabels" $ctx | nindent 8 }}
        {{- with $root.Values.pod.labels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "kamus.name" $ctx }}
      {{- /* The encryptor calls the apiserver only to authenticate callers: else no token. */}}
      automountServiceAccountToken: {{ include "kamus.needsToken" $ctx }}
      securityContext:
        {{- include "kamus.podSecurityContext" $root | nindent 8 }}
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .component }}
          image: {{ include "kamus.image" (dict "root" $root "image" .image) | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [kamus, serve, {{ .component }}]
          args: [--host, "0.0.0.0", --port, {{ .port | quote }}]
          ports:
            - name: http
              containerPort: {{ .port }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "kamus.fullname" $root }}-config
          env:
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            {{- if include "kamus.mountsKeys" $ctx }}
            {{- include "kamus.aesKeyEnv" $root | nindent 12 }}
            {{- end }}
            {{- if include "kamus.mountsSealingSeed" $ctx }}
            {{- include "kamus.sealingSeedEnv" $root | nindent 12 }}
            {{- end }}
            {{- if $tls }}
            {{- include "kamus.tlsEnv" $ctx | nindent 12 }}
            {{- end }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          livenessProbe:
            httpGet:
              path: {{ .health }}
              port: http
              scheme: {{ if $tls }}HTTPS{{ else }}HTTP{{ end }}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: {{ .ready }}
              port: http
              scheme: {{ if $tls }}HTTPS{{ else }}HTTP{{ end }}
            periodSeconds: 5
            timeoutSeconds: 3
          resources:
            {{- toYaml $root.Values.resources | nindent 12 }}
          securityContext:
            {{- include "kamus.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if include "kamus.mountsKeys" $ctx }}
            - name: keys
              mountPath: /var/run/secrets/kamus
              readOnly: true
            {{- end }}
            {{- if include "kamus.mountsSealingSeed" $ctx }}
            - name: sealing-seed
              mountPath: /var/run/secrets/kamus-sealing
              readOnly: true
            {{- end }}
            {{- if .publicKeys }}
            - name: public-keys
              mountPath: /var/run/kamus/public-keys
              readOnly: true
            {{- end }}
            {{- if $tls }}
            - name: tls
              mountPath: /var/run/secrets/kamus-tls
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            medium: Memory
            sizeLimit: 16Mi
        {{- if include "kamus.mountsKeys" $ctx }}
        - name: keys
          {{- include "kamus.keyVolume" $root | trim | nindent 10 }}
        {{- end }}
        {{- if include "kamus.mountsSealingSeed" $ctx }}
        # The KMS-wrapped sealing seed the key Job made (never rendered); only the pods that
        # decrypt mount it, and unwrapping it takes decrypt on its KMS key.
        - name: sealing-seed
          secret:
            secretName: {{ include "kamus.sealingSeedName" $root }}
            items:
              - key: sealing-seeds
                path: sealing-seeds
            defaultMode: 0440  # group-readable: the pod's fsGroup
        {{- end }}
        {{- if .publicKeys }}
        # The bundle the decryptor publishes; a directory, not a subPath, so that the kubelet
        # brings a renewed bundle in without a restart. Optional: on a fresh install it appears
        # once a decryptor has started, and the encryptor is not ready until then.
        - name: public-keys
          configMap:
            name: {{ include "kamus.publicKeysName" $root }}
            optional: true
        {{- end }}
        {{- if $tls }}
        - name: tls
          secret:
            secretName: {{ include "kamus.tlsSecretName" $ctx }}
            defaultMode: 0440  # group-readable: the pod's fsGroup
        {{- end }}
      {{- with include "kamus.topologySpread" $ctx | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- with include "kamus.scheduling" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
{{- end -}}

{{/* A ServiceAccount of one component. */}}
{{- define "kamus.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "kamus.name" . }}
  labels:
    {{- include "kamus.labels" . | nindent 4 }}
  {{- with .root.Values.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ include "kamus.needsToken" . }}
{{- end -}}

{{/* Whether a component talks to the apiserver: all but an encryptor without authentication. */}}
{{- define "kamus.needsToken" -}}
{{ or (ne .component "encryptor") (eq .root.Values.encryptor.authentication "kubernetes") }}
{{- end -}}

{{/* A PodDisruptionBudget, when there is more than one replica to keep. */}}
{{- define "kamus.pdb" -}}
{{- if gt (int .replicas) 1 }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "kamus.name" . }}
  labels:
    {{- include "kamus.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "kamus.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* An opt-in HorizontalPodAutoscaler on CPU. */}}
{{- define "kamus.hpa" -}}
{{- $a := .root.Values.autoscale -}}
{{- if $a.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "kamus.name" . }}
  labels:
    {{- include "kamus.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "kamus.name" . }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.targetCPU }}
{{- end }}
{{- end -}}

{{/* The Service of one component. */}}
{{- define "kamus.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "kamus.name" . }}
  labels:
    {{- include "kamus.labels" . | nindent 4 }}
  {{- with .root.Values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .type }}
  selector:
    {{- include "kamus.selectorLabels" . | nindent 4 }}
  ports:
    - name: {{ if .root.Values.tls.enabled }}https{{ else }}http{{ end }}
      port: {{ include "kamus.port" . }}
      targetPort: http
      protocol: TCP
{{- end -}}
