#!/usr/bin/env bash
# Gate a candidate checkpoint in any CI: scan it the way the stored baseline audit was scanned, then
# compare. Exit status: 0 gate passed, 1 a rule failed, 2 a usage or input error, 3 an internal error
# (the scan's or the gate's). The audit, its HTML, the gate's JSON verdict and its JUnit XML are left in
# $OUT for upload. --projection pca: the projection enters no gate figure, and UMAP is slower.
#
#   examples/ci/gate.sh CANDIDATE.pt BASELINE_AUDIT.json
#
# Settings come from the environment, with the demo's values as defaults. The scan settings must be
# those the baseline audit was made with (split, conditions, seed), or the gate refuses with exit 2.
set -uo pipefail

candidate=${1:?usage: gate.sh CANDIDATE.pt BASELINE_AUDIT.json}
baseline=${2:?usage: gate.sh CANDIDATE.pt BASELINE_AUDIT.json}
adapter=${BIASAUDIT_ADAPTER:-examples/digits_captions_adapter.py:adapter}
split=${BIASAUDIT_SPLIT:-test}
conditions=${BIASAUDIT_CONDITIONS:-missing,noisy}
seed=${BIASAUDIT_SEED:-0}
max_increase=${BIASAUDIT_MAX_GAP_INCREASE:-2}
min_full=${BIASAUDIT_MIN_FULL:-85}
out=${OUT:-biasaudit-ci}

biasaudit scan "$candidate" --adapter "$adapter" --split "$split" --conditions "$conditions" --seed "$seed" \
    --projection pca --out "$out" > /dev/null || exit $?
biasaudit gate "$out/audit.json" --baseline "$baseline" --max-gap-increase "$max_increase" --significant \
    --min-accuracy "full=$min_full" --junit "$out/gate.xml" --json > "$out/gate.json"
status=$?
echo "gate: exit $status; reports in $out/ (audit.html, audit.json, gate.json, gate.xml)" >&2
exit $status
