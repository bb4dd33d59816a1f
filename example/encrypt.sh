#!/bin/sh
# Encrypt the example's values with `kamus encrypt` and write the ciphertexts into
# configmap.yaml and kamussecret.yaml, next to this script, for the namespace and service account
# that kamussecret.yaml names. Run it again to re-encrypt (other values, another cluster): it
# replaces whatever each key holds.
#
#   example/encrypt.sh URL [kamus encrypt options]
#   example/encrypt.sh https://kamus.example.com --cert-fingerprint AB:CD:...
#   example/encrypt.sh http://localhost:9090 --allow-insecure-url    # through a port-forward
#
# URL is the encryptor; the options after it go to every `kamus encrypt` as they are
# (--allow-insecure-url, --cert-fingerprint, --ca-bundle). The values are demo values: set
# EXAMPLE_DB_USERNAME, EXAMPLE_DB_PASSWORD, EXAMPLE_API_KEY and EXAMPLE_FEATURE_FLAGS (JSON) to
# encrypt your own. Plaintexts reach `kamus encrypt` on stdin only: never in a file, nor in a
# command line that `ps` would show.
set -eu

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,16s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
url=$1
shift
here=$(cd "$(dirname "$0")" && pwd)

namespace=$(sed -n 's/^  namespace: *//p' "$here/kamussecret.yaml" | head -n 1)
service_account=$(sed -n 's/^serviceAccount: *//p' "$here/kamussecret.yaml" | head -n 1)
if [ -z "$namespace" ] || [ -z "$service_account" ]; then
    echo "encrypt.sh: cannot read the namespace and serviceAccount of $here/kamussecret.yaml" >&2
    exit 2
fi

db_username=${EXAMPLE_DB_USERNAME:-app}
db_password=${EXAMPLE_DB_PASSWORD:-example-db-password}
api_key=${EXAMPLE_API_KEY:-example-api-key-0123456789}
feature_flags=${EXAMPLE_FEATURE_FLAGS:-}
[ -n "$feature_flags" ] || feature_flags='{"beta": true, "maxItems": 20}'

# encrypt VALUE [kamus encrypt options]: prints the ciphertext of VALUE.
encrypt() {
    value=$1
    shift
    printf '%s' "$value" | kamus encrypt --secret - --service-account "$service_account" \
        --namespace "$namespace" --kamus-url "$url" --log-level warn "$@"
}

# put FILE SECTION KEY CIPHERTEXT: sets `  KEY: "CIPHERTEXT"` under the top-level SECTION.
put() {
    CIPHERTEXT=$4 awk -v section="$2" -v key="$3" '
        /^[^ #]/ { current = $0; sub(/:.*/, "", current) }
        current == section && index($0, "  " key ":") == 1 {
            print "  " key ": \"" ENVIRON["CIPHERTEXT"] "\""
            found = 1
            next
        }
        { print }
        END { if (!found) exit 3 }
    ' "$1" > "$1.new" || {
        echo "encrypt.sh: no key $3 under $2: in $(basename "$1")" >&2
        exit 1
    }
    mv "$1.new" "$1"
}

# Fill in copies, so that a failure half-way leaves the manifests as they were.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/configmap.yaml" "$here/kamussecret.yaml" "$work/"

ct=$(encrypt "$db_username" "$@")
put "$work/configmap.yaml" data db-username "$ct"
put "$work/kamussecret.yaml" stringData username "$ct"
ct=$(encrypt "$db_password" "$@")
put "$work/configmap.yaml" data db-password "$ct"
put "$work/kamussecret.yaml" stringData password "$ct"
ct=$(encrypt "$api_key" "$@")
put "$work/configmap.yaml" data api-key "$ct"
# KamusSecret.data holds the ciphertext of base64 text: the controller decodes it after decrypting.
api_key_b64=$(printf '%s' "$api_key" | base64 | tr -d '\n')
ct=$(encrypt "$api_key_b64" "$@")
put "$work/kamussecret.yaml" data api-key "$ct"
ct=$(encrypt "$feature_flags" "$@")
put "$work/configmap.yaml" data feature-flags "$ct"

cp "$work/configmap.yaml" "$here/configmap.yaml"
cp "$work/kamussecret.yaml" "$here/kamussecret.yaml"
echo "encrypt.sh: wrote the ciphertexts for $namespace:$service_account into" \
    "$here/configmap.yaml and $here/kamussecret.yaml" >&2
