#!/usr/bin/env bash
# The comment step of biasaudit's GitHub Action (action.yml): puts the gate's summary on the pull request, in ONE
# comment that each run updates. The comment starts with a hidden marker (MARKER below); the first comment of the pull
# request that starts with it AND was written by COMMENT_AUTHOR (the token's account) is edited (PATCH). Anyone may
# write the marker: a comment of someone else's is never edited (the edit would fail, or worse, succeed), so when
# there is no own one, or the edit fails, a new comment is posted (POST). Through `gh api` with GH_TOKEN (the
# workflow's GITHUB_TOKEN needs `pull-requests: write`).
#
# Environment: SUMMARY (the summary file), PR_NUMBER (empty outside a pull request: nothing to comment on),
# GITHUB_REPOSITORY (owner/name, set by the runner), GH_TOKEN, COMMENT_AUTHOR (the login that writes with GH_TOKEN;
# github-actions[bot] for the workflow's GITHUB_TOKEN), ARTIFACT_URL (the uploaded artifact's page; may be empty).
# A comment that cannot be written (a pull request from a fork gets a read-only token) is a warning, not a failure:
# the gate's verdict, not the comment, decides the job.
set -uo pipefail

MARKER='<!-- biasaudit-gate -->'
author=${COMMENT_AUTHOR:-github-actions[bot]}

if [ -z "${PR_NUMBER:-}" ]; then
    echo "::notice title=biasaudit gate::not a pull request, so no comment (the summary is in the job summary)"
    exit 0
fi
if [ ! -s "${SUMMARY:-}" ]; then
    echo "::warning title=biasaudit gate::no summary to comment with (${SUMMARY:-none}): did the gate step run?"
    exit 0
fi
body=$(mktemp)
trap 'rm -f "$body"' EXIT
{
    echo "$MARKER"
    cat "$SUMMARY"
    echo
    # The summary's links to the audits' HTML are paths in the job's workspace (right for a local copy), which a
    # comment cannot reach: say where the files are.
    if [ -n "${ARTIFACT_URL:-}" ]; then
        echo "Audit files (the HTML reports linked above, gate.json, gate.xml): $ARTIFACT_URL"
    else
        echo "Audit files: the links above are paths in the workflow's workspace; no artifact was uploaded."
    fi
} > "$body"

python=$(command -v python3 || command -v python)
# --slurp: every page of comments as one JSON array of pages.
comments=$(gh api --paginate --slurp "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments") || {
    echo "::warning title=biasaudit gate::could not list the pull request's comments, so none was written"
    exit 0
}
id=$(printf '%s' "$comments" | "$python" -c 'import json, sys
pages, marker, author = json.load(sys.stdin), sys.argv[1], sys.argv[2]
own = (
    c["id"]
    for page in pages
    for c in page
    if (c.get("body") or "").startswith(marker) and ((c.get("user") or {}).get("login") or "").lower() == author.lower()
)
print(next(own, ""))' "$MARKER" "$author")

if [ -n "$id" ]; then
    if gh api --method PATCH "repos/$GITHUB_REPOSITORY/issues/comments/$id" -F "body=@$body" > /dev/null; then
        echo "biasaudit gate: updated comment $id on pull request #$PR_NUMBER" >&2
        exit 0
    fi
    echo "::warning title=biasaudit gate::could not update comment $id, so a new one is posted"
fi
gh api --method POST "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments" -F "body=@$body" > /dev/null \
    && echo "biasaudit gate: commented on pull request #$PR_NUMBER" >&2 \
    || echo "::warning title=biasaudit gate::could not comment on pull request #$PR_NUMBER (does the token have pull-requests: write?)"
exit 0
