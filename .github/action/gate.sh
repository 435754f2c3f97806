#!/usr/bin/env bash
# The gate step of biasaudit's GitHub Action (action.yml): runs `biasaudit gate` on the action's inputs and records
# what it found as step outputs (exit-code, status, summary, json, files). It never fails itself, whatever the verdict:
# the upload and the pull-request comment run first, and the action's last step fails the job on FAIL or ERROR.
#
# Inputs come as environment variables (never as ${{ }} text inside this script, which a crafted input could turn
# into shell code): INPUT_AUDIT, INPUT_BASELINE, INPUT_RULES (extra gate flags, split on blanks and line breaks:
# each flag or value one word), INPUT_CONFIG, INPUT_OUT (the folder for summary.md, gate.json, gate.xml, gate.log).
# Under GitHub Actions the gate itself appends its summary to the job summary (GITHUB_STEP_SUMMARY).
#
# Exit code and status: a verdict's own (gate.json); without a verdict the gate could not judge, which is status
# ERROR and exit code 2 (3 when the gate itself said internal error), never 0 or 1: a shell that could not even start
# the gate (a redirect that failed) exits 1, which would read "a rule failed".
set -uo pipefail

out=${INPUT_OUT:-biasaudit-gate}
problem=""
# A line break in a path input could end a `name=value` line of GITHUB_OUTPUT and add outputs of its own; no path
# needs one. INPUT_RULES is exempt: it is split on line breaks on purpose and only ever reaches the gate's argv.
for name in audit baseline config out; do
    case $name in
        audit) value=${INPUT_AUDIT:-} ;;
        baseline) value=${INPUT_BASELINE:-} ;;
        config) value=${INPUT_CONFIG:-} ;;
        out) value=${INPUT_OUT:-} ;;
    esac
    case "$value" in
        *$'\n'* | *$'\r'*)
            problem="The action's \`$name\` input holds a line break; expected one path on one line."
            if [ "$name" = out ]; then out=biasaudit-gate; fi
            break
            ;;
    esac
done

# Where the gate's files go: the out folder, or when that cannot be made (a file of that name) a fresh folder under
# RUNNER_TEMP, so that the ERROR summary still reaches the job summary and the comment.
work=$out
if ! mkdir -p "$out" 2>/dev/null || [ ! -d "$out" ]; then
    [ -n "$problem" ] || problem="The action's \`out\` input, $out, is not a folder the gate can write to (is it a file?); expected a folder path."
    work=$(mktemp -d "${RUNNER_TEMP:-/tmp}/biasaudit-gate.XXXXXX")
fi
# A file from an earlier run in this workspace would stand for this one (a green JUnit report beside an ERROR).
rm -f "$work/summary.md" "$work/gate.json" "$work/gate.xml"

code=2
if [ -z "$problem" ]; then
    args=(gate "$INPUT_AUDIT" --summary-md "$work/summary.md" --junit "$work/gate.xml" --json)
    if [ -n "${INPUT_BASELINE:-}" ]; then args+=(--baseline "$INPUT_BASELINE"); fi
    if [ -n "${INPUT_CONFIG:-}" ]; then args+=(--config "$INPUT_CONFIG"); fi
    set -f  # word splitting of the rules without glob expansion: `full=85` or `*` stays as written
    # shellcheck disable=SC2206
    rules=(${INPUT_RULES:-})
    set +f
    # The redirect of stdout inside the subshell: a gate.json that cannot be written (a folder of that name) is then
    # reported in gate.log, which the ERROR summary quotes, instead of only in the step's log.
    (exec biasaudit "${args[@]}" "${rules[@]}" > "$work/gate.json") 2> "$work/gate.log"
    code=$?
    cat "$work/gate.log" >&2  # the table and the ::error / ::warning / ::notice annotations, for the log and the runner
fi

# The verdict's own status; without one (a usage or input error: exit 2 before any verdict, or an internal error)
# the gate could not judge, which the action reports as ERROR.
python=$(command -v python3 || command -v python)
status=$("$python" -c 'import json, sys
try:
    status = json.load(open(sys.argv[1], encoding="utf-8"))["status"]
except (OSError, ValueError, KeyError, TypeError):
    status = None
print(status if status in ("PASS", "WARN", "FAIL", "ERROR") else "NONE")' "$work/gate.json")
json="$work/gate.json"
if [ "$status" = NONE ]; then
    status=ERROR
    json=""
    if [ "$code" != 3 ]; then code=2; fi
fi
if [ ! -s "$work/summary.md" ]; then
    # No verdict, so no summary from the gate: say why in its place, for the job summary and the comment.
    {
        echo "### 🛑 biasaudit gate: ERROR"
        echo
        if [ -n "$problem" ]; then
            echo "$problem"
        else
            echo "The gate could not judge \`$INPUT_AUDIT\` (exit $code):"
            echo
            echo '```'
            grep -v '^::' "$work/gate.log" 2>/dev/null | tail -n 20
            echo '```'
        fi
    } > "$work/summary.md"
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then cat "$work/summary.md" >> "$GITHUB_STEP_SUMMARY"; fi
    if [ -n "$problem" ]; then echo "::error title=biasaudit gate::$problem"; fi
fi

files=("$work")
if [ -z "$problem" ]; then
    for audit in "$INPUT_AUDIT" "${INPUT_BASELINE:-}"; do
        if [ -n "$audit" ] && [ -f "$audit" ]; then files+=("$audit"); fi
        if [ -n "$audit" ] && [ -f "${audit%.json}.html" ]; then files+=("${audit%.json}.html"); fi
    done
fi
# A delimiter no file name can know in advance (GitHub's advice for multi-line outputs): a fixed one could be written
# as a line of its own by a path and end the block early.
delimiter="BIASAUDIT_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
{
    echo "exit-code=$code"
    echo "status=$status"
    echo "summary=$work/summary.md"
    echo "json=$json"
    echo "files<<$delimiter"
    printf '%s\n' "${files[@]}"
    echo "$delimiter"
} >> "$GITHUB_OUTPUT"
written=$(cd "$work" && for name in summary.md gate.json gate.xml gate.log; do if [ -s "$name" ]; then printf ' %s' "$name"; fi; done)
echo "biasaudit gate: $status (exit $code); written in $work/:${written:- nothing}" >&2
