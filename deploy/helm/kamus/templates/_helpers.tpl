{{/* Names: <release>-kamus-<component>, shortened to 63 characters. */}}
{{- define "kamus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kamus.name" -}}
{{- printf "%s-%s" (include "kamus.fullname" .root) .component -}}
{{- end -}}

{{- define "kamus.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kamus.labels" -}}
{{ include "kamus.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kamus.image" -}}
{{- $v := .root.Values.image -}}
{{- printf "%s/kamus-%s:%s" $v.repository .image (default .root.Chart.AppVersion $v.version) -}}
{{- end -}}

{{/* The Secret with the AES master key or the KMS credentials: yours (keyManagement.secretName),
else <fullname>-keys. With the AES provider and no key in the values, the key-secret hook Job
creates it inside the cluster (templates/key-secret-job.yaml); the chart never renders it. */}}
{{- define "kamus.keySecretName" -}}
{{- default (printf "%s-keys" (include "kamus.fullname" .)) .Values.keyManagement.secretName -}}
{{- end -}}

{{/* Whether the hook Job makes the AES key: the AES provider, no Secret of yours, no key in the
values. Fails when generation is off and no key is given. */}}
{{- define "kamus.generatesKey" -}}
{{- $km := .Values.keyManagement -}}
{{- if and (eq $km.provider "AESKey") (not $km.secretName) (not $km.AES.key) -}}
{{- if not $km.AES.generate -}}
{{- fail "keyManagement.AES.key is empty and keyManagement.AES.generate is false: set a key with --set keyManagement.AES.key=$(head -c 32 /dev/urandom | base64), or name your own Secret (key aes-key) in keyManagement.secretName" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* The KMS modes (AwsKms, GoogleKms, AzureKeyVault): the sealing keys derive from a random seed
wrapped by the KMS, which the key Job makes in this Secret (entry sealing-seeds), never rendered. */}}
{{- define "kamus.kmsMode" -}}
{{- if ne .Values.keyManagement.provider "AESKey" -}}
true
{{- end -}}
{{- end -}}

{{- define "kamus.sealingSeedName" -}}
{{- .Values.keyManagement.sealingSeed.secretName | default (printf "%s-sealing-seed" (include "kamus.fullname" .)) -}}
{{- end -}}

{{/* Whether the key Job runs: it makes the AES key, or in the KMS modes the sealing seed. */}}
{{- define "kamus.runsKeyJob" -}}
{{- if or (include "kamus.generatesKey" .) (and (include "kamus.kmsMode" .) (not .Values.keyManagement.sealingSeed.secretName)) -}}
true
{{- end -}}
{{- end -}}

{{/* The Secret the key Job makes (or checks and leaves alone). */}}
{{- define "kamus.keyJobSecretName" -}}
{{- if include "kamus.kmsMode" . -}}
{{- include "kamus.sealingSeedName" . -}}
{{- else -}}
{{- include "kamus.keySecretName" . -}}
{{- end -}}
{{- end -}}

{{/* The Secret the chart renders from AES keys given in the values (keyManagement.AES.key,
.previousKeys). Not <fullname>-keys: that name belongs to the generated key, which a rendered
Secret must never overwrite. */}}
{{- define "kamus.valuesKeySecretName" -}}
{{- printf "%s-keys-from-values" (include "kamus.fullname" .) -}}
{{- end -}}

{{/* The pods' volume of key material, mounted at /var/run/secrets/kamus. */}}
{{- define "kamus.keyVolume" -}}
{{- $km := .Values.keyManagement -}}
{{- if include "kamus.generatesKey" . }}
projected:
  defaultMode: 0440  # group-readable: the pod's fsGroup
  sources:
    - secret:
        name: {{ include "kamus.keySecretName" . }}
        items:
          - key: aes-key
            path: aes-key
    {{- if $km.AES.previousKeys }}
    - secret:
        name: {{ include "kamus.valuesKeySecretName" . }}
        items:
          - key: aes-previous-keys
            path: aes-previous-keys
    {{- end }}
{{- else }}
secret:
  {{- if and (eq $km.provider "AESKey") (not $km.secretName) }}
  secretName: {{ include "kamus.valuesKeySecretName" . }}
  {{- else }}
  secretName: {{ include "kamus.keySecretName" . }}
  {{- end }}
  defaultMode: 0440  # group-readable: the pod's fsGroup
{{- end }}
{{- end -}}

{{- define "kamus.port" -}}
{{- if .root.Values.tls.enabled }}{{ 443 }}{{ else }}{{ .root.Values.service.port }}{{ end -}}
{{- end -}}

{{- define "kamus.scheme" -}}
{{- if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end -}}
{{- end -}}

{{- define "kamus.tlsSecretName" -}}
{{- $given := index .root.Values.tls (printf "%sSecretName" .component) -}}
{{- default (printf "%s-tls" (include "kamus.name" .)) $given -}}
{{- end -}}

{{/* Pod and container hardening, the same for every workload. */}}
{{- define "kamus.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kamus.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* ConfigMap data: the key provider's settings. Secrets are never here, only the paths of
the files they are mounted as. */}}
{{- define "kamus.keyConfig" -}}
{{- $km := .Values.keyManagement -}}
{{- /* Kamus's values are not bound to any identity (a team-a value opens as team-b's): read
them only while migrating from Kamus. The services default to reading them; the chart does not. */}}
{{- $fromKamus := .Values.migration.fromKamus | toString | quote -}}
KeyManagement__Provider: {{ $km.provider | quote }}
{{- if eq $km.provider "AESKey" }}
{{- /* The key files' paths are not here: the encryptor reads this ConfigMap too, and in AES
mode it holds no key (kamus.aesKeyEnv, for the decryptor and the controller). */}}
KeyManagement__AES__AllowLegacyCiphertexts: {{ $fromKamus }}
KeyManagement__AES__AllowPublicDefaultKey: {{ $fromKamus }}
{{- else if eq $km.provider "AzureKeyVault" }}
KeyManagement__KeyVault__Name: {{ required "keyManagement.azureKeyVault.keyVaultName is required" $km.azureKeyVault.keyVaultName | quote }}
KeyManagement__KeyVault__KeyType: {{ $km.azureKeyVault.keyType | quote }}
KeyManagement__KeyVault__KeyLength: {{ $km.azureKeyVault.keySize | quote }}
KeyManagement__KeyVault__MaximumDataLength: {{ $km.azureKeyVault.maximumDataLength | quote }}
{{- with $km.azureKeyVault.clientId }}
ActiveDirectory__ClientId: {{ . | quote }}
{{- end }}
{{- with $km.azureKeyVault.tenantId }}
ActiveDirectory__TenantId: {{ . | quote }}
{{- end }}
{{- if or $km.azureKeyVault.clientSecret $km.secretName }}
ActiveDirectory__ClientSecretFile: /var/run/secrets/kamus/azure-client-secret
{{- end }}
{{- else if eq $km.provider "GoogleKms" }}
KeyManagement__GoogleKms__ProjectId: {{ required "keyManagement.googleKms.projectId is required" $km.googleKms.projectId | quote }}
KeyManagement__GoogleKms__Location: {{ $km.googleKms.location | quote }}
KeyManagement__GoogleKms__KeyRingName: {{ $km.googleKms.keyRing | quote }}
KeyManagement__GoogleKms__ProtectionLevel: {{ $km.googleKms.protectionLevel | quote }}
{{- if or $km.googleKms.credentials $km.secretName }}
KeyManagement__GoogleKms__CredentialsPath: /var/run/secrets/kamus/google-credentials.json
{{- end }}
{{- else if eq $km.provider "AwsKms" }}
KeyManagement__AwsKms__Region: {{ required "keyManagement.awsKms.region is required" $km.awsKms.region | quote }}
KeyManagement__AwsKms__CmkPrefix: {{ $km.awsKms.cmkPrefix | quote }}
KeyManagement__AwsKms__AutomaticKeyRotation: {{ $km.awsKms.enableAutomaticKeyRotation | quote }}
{{- if or $km.awsKms.key $km.secretName }}
# The SDK's standard credentials file, so static keys never sit in the environment.
AWS_SHARED_CREDENTIALS_FILE: /var/run/secrets/kamus/aws-credentials
{{- end }}
{{- end }}
{{- if ne $km.provider "AESKey" }}
KeyManagement__AllowLegacyCiphertexts: {{ $fromKamus }}
{{- end }}
{{- with $km.recipientKeys }}
KeyManagement__RecipientKeys: {{ join "," . | quote }}
{{- end }}
{{- with $km.extraRecipients }}
KeyManagement__ExtraRecipients: {{ join "," . | quote }}
{{- end }}
{{- /* Here, not in the decryptor's env: the controller decrypts too, under the same policy. */}}
{{- with .Values.decryptor.recipients.required }}
Decryptor__RequiredRecipients: {{ join "," . | quote }}
{{- end }}
{{- with .Values.decryptor.recipients.forbidden }}
Decryptor__ForbiddenRecipients: {{ join "," . | quote }}
{{- end }}
{{- end -}}

{{/* The KMS credentials given in the values, as a Secret's data (none for a workload identity). */}}
{{- define "kamus.kmsCredentialsData" -}}
{{- $km := .Values.keyManagement -}}
{{- if eq $km.provider "AzureKeyVault" }}
{{- with $km.azureKeyVault.clientSecret }}
azure-client-secret: {{ . | b64enc }}
{{- end }}
{{- else if eq $km.provider "GoogleKms" }}
{{- with $km.googleKms.credentials }}
google-credentials.json: {{ . | b64enc }}
{{- end }}
{{- else if and (eq $km.provider "AwsKms") $km.awsKms.key }}
aws-credentials: {{ printf "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" $km.awsKms.key (required "keyManagement.awsKms.secret is required with keyManagement.awsKms.key" $km.awsKms.secret) | b64enc }}
{{- end }}
{{- end -}}

{{/* Whether the provider needs the key Secret mounted at all. */}}
{{- define "kamus.needsKeySecret" -}}
{{- $km := .Values.keyManagement -}}
{{- if or (eq $km.provider "AESKey") $km.secretName $km.azureKeyVault.clientSecret $km.googleKms.credentials $km.awsKms.key -}}
true
{{- end -}}
{{- end -}}

{{/* Whether the encryptor holds no key at all: the AES provider, where it seals every value to
the public key bundle. (The KMS modes keep encrypting online with each service account's KMS key,
and serve the bundle for offline sealing.) */}}
{{- define "kamus.sealsWithBundle" -}}
{{- if eq .Values.keyManagement.provider "AESKey" -}}
true
{{- end -}}
{{- end -}}

{{/* Whether one component mounts the key Secret: every one that needs it, but the encryptor
when it seals with the bundle. Arguments: root, component. */}}
{{- define "kamus.mountsKeys" -}}
{{- if and (include "kamus.needsKeySecret" .root) (not (and (eq .component "encryptor") (include "kamus.sealsWithBundle" .root))) -}}
true
{{- end -}}
{{- end -}}

{{/* The AES key files, for the components that mount the keys (a list of env entries). */}}
{{- define "kamus.aesKeyEnv" -}}
{{- $km := .Values.keyManagement -}}
{{- if eq $km.provider "AESKey" }}
- name: KeyManagement__AES__KeyFile
  value: /var/run/secrets/kamus/aes-key
{{- if $km.AES.previousKeys }}
- name: KeyManagement__AES__PreviousKeysFile
  value: /var/run/secrets/kamus/aes-previous-keys
{{- end }}
{{- end }}
{{- end -}}

{{/* The KMS modes: the wrapped sealing seed, for the components that decrypt (the decryptor and
the controller; never the encryptor). A volume of its own: the key Job makes that Secret. */}}
{{- define "kamus.sealingSeedEnv" -}}
- name: KeyManagement__Sealing__WrappedSeedsFile
  value: /var/run/secrets/kamus-sealing/sealing-seeds
{{- end -}}

{{- define "kamus.mountsSealingSeed" -}}
{{- if and (include "kamus.kmsMode" .root) (ne .component "encryptor") -}}
true
{{- end -}}
{{- end -}}

{{/* The ConfigMap the decryptor publishes the signed public key bundle in. The chart never
renders it: GitOps tools then neither prune nor overwrite what the decryptor writes. */}}
{{- define "kamus.publicKeysName" -}}
{{- printf "%s-public-keys" (include "kamus.fullname" .) -}}
{{- end -}}

{{/* Whether the decryptor publishes it: every provider, unless decryptor.publicKeys.publish=false. */}}
{{- define "kamus.publishesKeys" -}}
{{- if .Values.decryptor.publicKeys.publish -}}
true
{{- end -}}
{{- end -}}

{{- define "kamus.tlsEnv" -}}
{{- if .root.Values.tls.enabled }}
- name: Server__TlsCertFile
  value: /var/run/secrets/kamus-tls/tls.crt
- name: Server__TlsKeyFile
  value: /var/run/secrets/kamus-tls/tls.key
{{- end }}
{{- end -}}

{{- define "kamus.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .root.Values.topologySpread.maxSkew }}
    topologyKey: {{ .root.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "kamus.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{- define "kamus.scheduling" -}}
{{- include "kamus.schedulingWith" (dict "root" . "affinity" .Values.affinity) }}
{{- end -}}

{{/* kamus.scheduling with an affinity of the caller's (the injector adds its anti-affinity).
Arguments: root, affinity. */}}
{{- define "kamus.schedulingWith" -}}
{{- $root := .root -}}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Rolls the pods when their configuration or the key material given in the values changes
(the latter only for the pods that mount keys: a bundle-sealing encryptor picks up the new
bundle from its ConfigMap). A generated key is in no manifest, so nothing here depends on it:
renders stay identical. Arguments: root, component. */}}
{{- define "kamus.checksums" -}}
{{- $root := .root -}}
checksum/config: {{ print (include (print $root.Template.BasePath "/configmap.yaml") $root) (include "kamus.aesKeyEnv" $root) | sha256sum }}
{{- if include "kamus.mountsKeys" . }}
checksum/keys: {{ $root.Values.keyManagement | toJson | sha256sum }}
{{- end }}
{{- end -}}


{{/* The in-cluster URL of the encryptor's or the decryptor's Service, as clients use it.
Arguments: root, component. */}}
{{- define "kamus.serviceUrl" -}}
{{- printf "%s://%s.%s.svc:%s" (ternary "https" "http" .root.Values.tls.enabled) (include "kamus.name" .) .root.Release.Namespace (include "kamus.port" .) -}}
{{- end -}}

{{/* The injector (templates/injector.yaml). Every name derives from <fullname>-injector. */}}
{{- define "kamus.injector.name" -}}
{{- include "kamus.name" (dict "root" . "component" "injector") -}}
{{- end -}}

{{/* Built-in TLS: the Secret of the CA the injector makes, and the Lease of the replica that
patches the webhook's caBundle. */}}
{{- define "kamus.injector.caSecretName" -}}
{{- printf "%s-ca" (include "kamus.injector.name" .) -}}
{{- end -}}

{{- define "kamus.injector.leaseName" -}}
{{- printf "%s-ca-bundle" (include "kamus.injector.name" .) -}}
{{- end -}}

{{/* cert-manager: the serving certificate's Secret. */}}
{{- define "kamus.injector.tlsSecretName" -}}
{{- printf "%s-tls" (include "kamus.injector.name" .) -}}
{{- end -}}

{{/* Whether the cluster has admissionregistration.k8s.io/v1 policies (Kubernetes 1.30+): the
ValidatingAdmissionPolicy and the webhook's matchConditions need them. `helm install` asks the
cluster; `helm template` knows only what --api-versions tells it. */}}
{{- define "kamus.injector.hasPolicies" -}}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy" -}}
true
{{- end -}}
{{- end -}}

{{/* The namespaces the webhook and the policy never see: the control plane's, and the
release's own, so that the injector never waits on itself (vault-k8s #258). */}}
{{- define "kamus.injector.excludedNamespaces" -}}
{{- list "kube-system" "kube-public" .Release.Namespace | uniq | toJson -}}
{{- end -}}

{{/* Which pods the webhook and the policy apply to: the opted-in ones, outside the excluded
namespaces. */}}
{{- define "kamus.injector.selectors" -}}
objectSelector:
  matchLabels:
    kamus.soluto.com/inject: "true"
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ include "kamus.injector.excludedNamespaces" . }}
{{- end -}}
