#!/usr/bin/env bash
# The comment step of biasaudit's GitHub Action (action.yml): puts the gate's summary on the pull request, in ONE
# comment that each run updates. The comment starts with a hidden marker (MARKER below); the first comment of the pull
# request that starts with it is edited (PATCH), and when there is none a new one is posted (POST). Through `gh api`
# with GH_TOKEN (the workflow's GITHUB_TOKEN needs `pull-requests: write`).
#
# Environment: SUMMARY (the summary file), PR_NUMBER (empty outside a pull request: nothing to comment on),
# GITHUB_REPOSITORY (owner/name, set by the runner), GH_TOKEN.
# A comment that cannot be written (a pull request from a fork gets a read-only token) is a warning, not a failure:
# the gate's verdict, not the comment, decides the job.
set -uo pipefail

MARKER='<!-- biasaudit-gate -->'

if [ -z "${PR_NUMBER:-}" ]; then
    echo "::notice title=biasaudit gate::not a pull request, so no comment (the summary is in the job summary)"
    exit 0
fi
if [ ! -s "${SUMMARY:-}" ]; then
    echo "::warning title=biasaudit gate::no summary to comment with (${SUMMARY:-none}): did the gate step run?"
    exit 0
fi
body=$(mktemp)
{ echo "$MARKER"; cat "$SUMMARY"; } > "$body"

python=$(command -v python3 || command -v python)
# --slurp: every page of comments as one JSON array of pages.
comments=$(gh api --paginate --slurp "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments") || {
    echo "::warning title=biasaudit gate::could not list the pull request's comments, so none was written"
    exit 0
}
id=$(printf '%s' "$comments" | "$python" -c 'import json, sys
pages = json.load(sys.stdin)
print(next((c["id"] for page in pages for c in page if (c.get("body") or "").startswith(sys.argv[1])), ""))' "$MARKER")

if [ -n "$id" ]; then
    gh api --method PATCH "repos/$GITHUB_REPOSITORY/issues/comments/$id" -F "body=@$body" > /dev/null \
        && echo "biasaudit gate: updated comment $id on pull request #$PR_NUMBER" >&2 \
        || echo "::warning title=biasaudit gate::could not update comment $id (does the token have pull-requests: write?)"
else
    gh api --method POST "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments" -F "body=@$body" > /dev/null \
        && echo "biasaudit gate: commented on pull request #$PR_NUMBER" >&2 \
        || echo "::warning title=biasaudit gate::could not comment on pull request #$PR_NUMBER (does the token have pull-requests: write?)"
fi
rm -f "$body"
exit 0
