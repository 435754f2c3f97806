#!/usr/bin/env bash
# The gate step of biasaudit's GitHub Action (action.yml): runs `biasaudit gate` on the action's inputs and records
# what it found as step outputs (exit-code, status, summary, json, files). It never fails itself, whatever the verdict:
# the upload and the pull-request comment run first, and the action's last step fails the job on FAIL or ERROR.
#
# Inputs come as environment variables (never as ${{ }} text inside this script, which a crafted input could turn
# into shell code): INPUT_AUDIT, INPUT_BASELINE, INPUT_RULES (extra gate flags, split on blanks and line breaks:
# each flag or value one word), INPUT_CONFIG, INPUT_OUT (the folder for summary.md, gate.json, gate.xml, gate.log).
# Under GitHub Actions the gate itself appends its summary to the job summary (GITHUB_STEP_SUMMARY).
set -uo pipefail

out=${INPUT_OUT:-biasaudit-gate}
mkdir -p "$out"
args=(gate "$INPUT_AUDIT" --summary-md "$out/summary.md" --junit "$out/gate.xml" --json)
if [ -n "${INPUT_BASELINE:-}" ]; then args+=(--baseline "$INPUT_BASELINE"); fi
if [ -n "${INPUT_CONFIG:-}" ]; then args+=(--config "$INPUT_CONFIG"); fi
set -f  # word splitting of the rules without glob expansion: `full=85` or `*` stays as written
# shellcheck disable=SC2206
rules=(${INPUT_RULES:-})
set +f
rm -f "$out/summary.md" "$out/gate.json"  # a file from an earlier run in this workspace would stand for this one

biasaudit "${args[@]}" "${rules[@]}" > "$out/gate.json" 2> "$out/gate.log"
code=$?
cat "$out/gate.log" >&2  # the table and the ::error / ::warning / ::notice annotations, for the log and the runner

# The verdict's own status; without one (a usage or input error: exit 2 before any verdict, or an internal error)
# the gate could not judge, which the action reports as ERROR.
python=$(command -v python3 || command -v python)
status=$("$python" -c 'import json, sys
try:
    print(json.load(open(sys.argv[1], encoding="utf-8"))["status"])
except (OSError, ValueError, KeyError, TypeError):
    print("ERROR")' "$out/gate.json")
if [ ! -s "$out/summary.md" ]; then
    # No verdict, so no summary from the gate: say why in its place, for the job summary and the comment.
    {
        echo "### 🛑 biasaudit gate: ERROR"
        echo
        echo "The gate could not judge \`$INPUT_AUDIT\` (exit $code):"
        echo
        echo '```'
        grep -v '^::' "$out/gate.log" | tail -n 20
        echo '```'
    } > "$out/summary.md"
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then cat "$out/summary.md" >> "$GITHUB_STEP_SUMMARY"; fi
fi

files=("$out")
for audit in "$INPUT_AUDIT" "${INPUT_BASELINE:-}"; do
    if [ -n "$audit" ] && [ -f "$audit" ]; then files+=("$audit"); fi
    if [ -n "$audit" ] && [ -f "${audit%.json}.html" ]; then files+=("${audit%.json}.html"); fi
done
{
    echo "exit-code=$code"
    echo "status=$status"
    echo "summary=$out/summary.md"
    if [ -s "$out/gate.json" ]; then echo "json=$out/gate.json"; else echo "json="; fi
    echo "files<<BIASAUDIT_FILES_END"
    printf '%s\n' "${files[@]}"
    echo "BIASAUDIT_FILES_END"
} >> "$GITHUB_OUTPUT"
echo "biasaudit gate: $status (exit $code); summary, gate.json and gate.xml in $out/" >&2
