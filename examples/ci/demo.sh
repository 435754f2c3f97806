#!/usr/bin/env bash
# The gate end to end on the bundled demo, offline: the BalGrad-fixed model's audit is the stored
# baseline; the biased demo model must fail the gate against it and the fixed model must pass.
#
#   examples/ci/demo.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-biasaudit-ci-demo}
mkdir -p "$work"

biasaudit demo --out "$work/demo" > /dev/null
# The fix run's after.json is an audit of the fixed model, scanned the way gate.sh scans (split test,
# conditions missing,noisy,carrier, seed 0): it becomes the baseline a repository would keep.
biasaudit fix "$work/demo/model.pt" --adapter "$here/../digits_captions_adapter.py:adapter" --method balgrad \
    --split test --conditions missing,noisy,carrier --out "$work/fixed" > /dev/null
cp "$work/fixed/after.json" "$work/baseline-audit.json"

export BIASAUDIT_ADAPTER="$here/../digits_captions_adapter.py:adapter"
set +e
OUT="$work/biased" "$here/gate.sh" "$work/demo/model.pt" "$work/baseline-audit.json"
biased=$?
OUT="$work/candidate" "$here/gate.sh" "$work/fixed/model.pt" "$work/baseline-audit.json"
fixed=$?
set -e
echo "biased candidate: exit $biased (expected 1); fixed candidate: exit $fixed (expected 0)"
[ "$biased" -eq 1 ] && [ "$fixed" -eq 0 ]
# Both verdicts' pull-request summaries, written whatever the verdict, fit GitHub's comment limit (65,536 characters,
# well under a job summary's 1 MiB) and open with their status.
for case in "biased:FAIL" "candidate:PASS"; do
    summary="$work/${case%%:*}/summary.md"
    size=$(wc -c < "$summary")
    head -1 "$summary" | grep -q "biasaudit gate: ${case##*:}\$" || { echo "$summary does not open with ${case##*:}"; exit 1; }
    [ "$size" -lt 65536 ] || { echo "$summary is $size bytes, over GitHub's comment limit"; exit 1; }
    echo "$summary: ${case##*:}, $size bytes"
done
