#!/usr/bin/env bash
# Runs the promtool unit tests of the alerts (alerts_test.yaml) against
# base/prometheusrule.yaml. promtool reads plain rule files, so the
# PrometheusRule's spec is written out as one (kpush-rules.yaml) in a
# temporary directory next to a copy of the tests. Needs promtool (Debian:
# apt-get install prometheus).
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The rule groups are everything under "spec:", one indentation level up.
awk 'in_spec { sub(/^  /, ""); print } /^spec:/ { in_spec = 1 }' base/prometheusrule.yaml >"$tmp/kpush-rules.yaml"
cp alerts_test.yaml "$tmp/alerts_test.yaml"
promtool check rules "$tmp/kpush-rules.yaml"
promtool test rules "$tmp/alerts_test.yaml"
