#!/usr/bin/env bash
# Gate a candidate checkpoint in any CI: scan it the way the stored baseline audit was scanned, then
# compare. Exit status: 0 gate passed, 1 a rule failed, 2 a usage or input error, 3 an internal error
# (the scan's or the gate's). The audit, its HTML, the gate's JSON verdict, its JUnit XML and its Markdown
# summary (for a pull request; under GitHub Actions also the job summary) are left in $OUT for upload. --projection pca: the projection enters no gate figure, and UMAP is slower.
#
#   examples/ci/gate.sh CANDIDATE.pt BASELINE_AUDIT.json
#
# Settings come from the environment, with the demo's values as defaults. The scan settings must be
# those the baseline audit was made with (split, conditions, seed), or the gate refuses with exit 2.
# Bias rules come first: the carrier's bias-follow rate must not rise (the carrier test needs `carrier` in
# the conditions) and Full accuracy must stay above a floor. A Gap ratchet is opt-in
# (BIASAUDIT_MAX_GAP_INCREASE): a de-biased model that uses its informative modality better has a LARGER
# Gap, so a Gap ratchet alone can block the fix and pass the biased model (README, "Gating a release").
set -uo pipefail

candidate=${1:?usage: gate.sh CANDIDATE.pt BASELINE_AUDIT.json}
baseline=${2:?usage: gate.sh CANDIDATE.pt BASELINE_AUDIT.json}
adapter=${BIASAUDIT_ADAPTER:-examples/digits_captions_adapter.py:adapter}
split=${BIASAUDIT_SPLIT:-test}
conditions=${BIASAUDIT_CONDITIONS:-missing,noisy,carrier}
seed=${BIASAUDIT_SEED:-0}
max_follow_increase=${BIASAUDIT_MAX_BIAS_FOLLOW_INCREASE:-2}
min_full=${BIASAUDIT_MIN_FULL:-85}
gap_rule=()
if [ -n "${BIASAUDIT_MAX_GAP_INCREASE:-}" ]; then gap_rule=(--max-gap-increase "missing=$BIASAUDIT_MAX_GAP_INCREASE"); fi
out=${OUT:-biasaudit-ci}

biasaudit scan "$candidate" --adapter "$adapter" --split "$split" --conditions "$conditions" --seed "$seed" \
    --projection pca --out "$out" > /dev/null || exit $?
biasaudit gate "$out/audit.json" --baseline "$baseline" --max-bias-follow-increase "$max_follow_increase" "${gap_rule[@]}" \
    --significant --min-accuracy "full=$min_full" --junit "$out/gate.xml" --summary-md "$out/summary.md" --json > "$out/gate.json"
status=$?
echo "gate: exit $status; reports in $out/ (audit.html, audit.json, gate.json, gate.xml, summary.md)" >&2
exit $status
