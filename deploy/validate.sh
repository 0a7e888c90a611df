#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/kubernetes offline: every document
# against the API schemas of a Kubernetes release (bundled in PyPI's
# kubernetes-validate, so no cluster and no network are needed), strictly (unknown
# fields are errors), plus the Prometheus scrape configuration the ConfigMap carries.
#
#   pip install kubernetes-validate pyyaml      # CI: .ci/run (in a virtualenv)
#   deploy/validate.sh [KUBERNETES_VERSION]     # default 1.30.0
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${1:-1.30.0}"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate)"
    # CI sets EARSHOT_REQUIRE_VALIDATE=1: there a skip is a failure.
    [ "${EARSHOT_REQUIRE_VALIDATE:-0}" = 1 ] && exit 1
    exit 0
fi
status=0
for f in "$here"/kubernetes/*.yaml; do
    if kubernetes-validate --strict -k "$version" --quiet "$f"; then
        echo "valid: $(basename "$f") (Kubernetes $version, strict)"
    else
        echo "INVALID: $(basename "$f")"
        status=1
    fi
done
python3 - "$here/kubernetes/prometheus-scrape.yaml" <<'PY' || status=1
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
scrape = yaml.safe_load(doc["data"]["earshot-scrape.yaml"])
jobs = scrape["scrape_configs"]
assert jobs and all("job_name" in j for j in jobs), "every scrape job is named"
for j in jobs:
    for r in j.get("relabel_configs", []):
        assert r.get("action", "replace") in {"keep", "drop", "replace", "labelmap", "labeldrop", "labelkeep", "hashmod"}, r
print("valid: prometheus scrape configuration (%d job(s))" % len(jobs))
PY
exit $status
