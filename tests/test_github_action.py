"""biasaudit's GitHub Action (action.yml; issue 24, item 3), tested without GitHub: `act` is not available and nothing
may reach the network.

(a) action.yml and examples/ci/github-actions.yml are validated against SchemaStore's GitHub Action and workflow
schemas, which the `check-jsonschema` package vendors (its `vendor.github-actions` and `vendor.github-workflows`
builtin schemas; it needs the test extra): an action GitHub refuses to load fails here.

(b) The composite's steps run in order under a small harness that does what the runner does for them: `if:` is
evaluated, `${{ ... }}` is substituted in `env:` and `run:`, each `run:` goes to `bash --noprofile --norc -eo pipefail`
(GitHub's `shell: bash`) in the workspace with the files GitHub sets (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, GITHUB_ENV)
and GITHUB_ACTION_PATH, GITHUB_WORKSPACE, RUNNER_TEMP, GITHUB_REPOSITORY, and the outputs a step writes feed the
`steps.<id>.outputs.*` of the next ones. What it does not do: `uses:` steps (actions/setup-python, upload-artifact)
are skipped (a skipped step whose `if:` holds gets the outputs its action documents, USES_OUTPUTS: upload-artifact's
artifact-url), and the install step is skipped by its own `if:` through the input `install: false` (this venv already has
biasaudit on PATH, as a job that installed it for its scan would). The expression substituter knows only the
expressions listed in `KNOWN_GITHUB` and the forms `inputs.*`, `steps.<id>.outputs.*`, and refuses any other, so that
an expression whose value the harness would have to invent fails the test instead. `gh` is a fake on PATH that plays
GitHub's comments API for one pull request and records every call; each comment has its author (`user.login`), and
the fake token writes as github-actions[bot], as the workflow's GITHUB_TOKEN does.

Every run gates the hand-counted audit pair of tests/fixtures/bias_pair.py (no scan): the de-biased model against the
biased baseline passes, the other way round fails.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "action.yml"
WORKFLOW = REPO / "examples" / "ci" / "github-actions.yml"
FIXTURES = Path(__file__).parent / "fixtures"
MARKER = "<!-- biasaudit-gate -->"
PR = "7"
REPOSITORY = "octo/model"
# The github.* expressions the harness can give a value, and the values: a pull request's run.
KNOWN_GITHUB = {"github.action_path": str(REPO), "github.token": "fake-token", "github.event.pull_request.number": PR}
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
BOT = "github-actions[bot]"
ARTIFACT_URL = "https://github.com/octo/model/actions/runs/11/artifacts/22"
# The outputs a `uses:` step's action documents, by action: what the steps after it read.
USES_OUTPUTS = {"actions/upload-artifact@v4": {"artifact-url": ARTIFACT_URL}, "actions/setup-python@v5": {}}
PASS_RULES = "--max-worst-group-drop 1\n--max-bias-follow-increase 1 --min-accuracy full=40"  # two lines: both are read


# --- (a) the schemas ---------------------------------------------------------------------------------------------------


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail("check-jsonschema is not installed: it comes with the test extra (pip install -e '.[test]')")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_action_and_the_example_workflow_fit_github_s_schemas(tmp_path):
    """An action.yml that GitHub cannot load fails every workflow that uses it, at the start of the job; an example
    workflow that is not one misleads whoever copies it."""
    for schema, path in (("vendor.github-actions", ACTION), ("vendor.github-workflows", WORKFLOW)):
        result = check_jsonschema(schema, path)
        assert result.returncode == 0, result.stdout + result.stderr
    # The check is not blind: a composite `run:` step without `shell:` is one GitHub refuses to load.
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    del next(step for step in action["runs"]["steps"] if "run" in step)["shell"]
    broken = tmp_path / "action.yml"
    broken.write_text(yaml.safe_dump(action), encoding="utf-8")
    assert check_jsonschema("vendor.github-actions", broken).returncode == 1


def test_the_example_workflow_uses_the_action_with_inputs_it_has():
    """A `with:` key the action does not declare is ignored by GitHub with a warning only: the rules would silently not
    apply."""
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    # PyYAML reads the key `on` as True (YAML 1.1); the jobs are what is read here.
    steps = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["gate"]["steps"]
    gate = next(step for step in steps if str(step.get("uses", "")).endswith("/biasaudit@v0"))
    assert set(gate["with"]) <= set(action["inputs"]) and {"audit", "baseline", "rules"} <= set(gate["with"])
    required = {name for name, spec in action["inputs"].items() if spec.get("required")}
    assert required <= set(gate["with"])


# What each `uses:` of the example workflow needs of the workflow's token, from the action's own documentation. An action
# not listed fails the test below: whoever adds a step says what it needs.
NEEDS = {
    "actions/checkout": {"contents": "read"},
    "actions/setup-python": {},
    "mikepenz/action-junit-report": {"checks": "write"},  # creates a check run with the report
    "OWNER/biasaudit": {},  # with `comment: true`, pull-requests: write (below)
}


def test_the_example_workflow_grants_what_each_of_its_steps_needs_and_no_more():
    """A step whose permission the `permissions:` block leaves out fails with 403 (the junit report's check run: a red
    job even when the gate passes); one it grants beyond the steps' needs is a token wider than it must be."""
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    granted = workflow["permissions"]
    needed: dict[str, str] = {}
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "uses" not in step:
                continue
            action = step["uses"].split("@")[0]
            assert action in NEEDS, f"the example uses {action}, whose permissions this test does not know"
            needs = dict(NEEDS[action])
            if action == "OWNER/biasaudit" and str(step.get("with", {}).get("comment")).lower() == "true":
                needs["pull-requests"] = "write"
            for scope, level in needs.items():
                needed[scope] = "write" if "write" in (level, needed.get(scope)) else "read"
    level = {"none": 0, "read": 1, "write": 2}
    short = {scope: need for scope, need in needed.items() if level[granted.get(scope, "none")] < level[need]}
    assert not short, f"the example's permissions lack {short}"
    assert set(granted) == set(needed), f"permissions no step needs: {set(granted) - set(needed)}"
    assert needed["checks"] == "write"  # the junit report is in the example: the check above is not blind


# --- (b) the harness ---------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run of the action: the inputs, each step's outputs and record, the job summary."""

    inputs: dict[str, str]
    step_ids: set[str]
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # what steps wrote to GITHUB_ENV
    steps: list[dict] = field(default_factory=list)  # name, what happened, exit code, output
    summary: str = ""
    failed: bool = False
    action_outputs: dict[str, str] = field(default_factory=dict)

    def step(self, name: str) -> dict:
        return next(step for step in self.steps if step["name"] == name)


def evaluate(expression: str, run: Run) -> str:
    """The value of one `${{ }}` expression; any expression not modelled here is refused."""
    match = re.fullmatch(r"inputs\.([A-Za-z_][\w-]*)", expression)
    if match:
        if match[1] not in run.inputs:
            raise AssertionError(f"${{{{ {expression} }}}} names an input action.yml does not declare")
        return run.inputs[match[1]]
    match = re.fullmatch(r"steps\.([A-Za-z_][\w-]*)\.outputs\.([A-Za-z_][\w-]*)", expression)
    if match:
        if match[1] not in run.step_ids:
            raise AssertionError(f"${{{{ {expression} }}}} names a step id action.yml does not have")
        return run.outputs.get(match[1], {}).get(match[2], "")  # GitHub: an output never written is ''
    if expression in KNOWN_GITHUB:
        return KNOWN_GITHUB[expression]
    raise AssertionError(f"the harness does not know the expression ${{{{ {expression} }}}}")


def substitute(text: str, run: Run) -> str:
    return EXPRESSION.sub(lambda m: evaluate(m[1], run), text)


def condition(text: str | None, run: Run) -> bool:
    """A step's `if:`: terms joined by &&, each always(), success(), failure() or inputs.X ==/!= 'literal'; without a
    status function success() is implied, as on GitHub. Anything else is refused."""
    text = (text or "success()").strip()
    wrapped = re.fullmatch(r"\$\{\{(.*)\}\}", text)
    terms = [term.strip() for term in (wrapped[1] if wrapped else text).split("&&")]
    values = []
    for term in terms:
        compared = re.fullmatch(r"inputs\.([A-Za-z_][\w-]*)\s*(==|!=)\s*'([^']*)'", term)
        if term in ("always()", "success()", "failure()"):
            values.append({"always()": True, "success()": not run.failed, "failure()": run.failed}[term])
        elif compared:
            values.append((evaluate(f"inputs.{compared[1]}", run) == compared[3]) == (compared[2] == "=="))
        else:
            raise AssertionError(f"the harness does not know the condition {term!r}")
    if not {"always()", "success()", "failure()"} & set(terms):
        values.append(not run.failed)
    return all(values)


def read_commands_file(path: Path) -> dict[str, str]:
    """GITHUB_OUTPUT / GITHUB_ENV: `name=value` lines and `name<<DELIMITER` ... `DELIMITER` blocks."""
    lines, values, i = path.read_text(encoding="utf-8").splitlines(), {}, 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)  # ValueError: an unterminated block, which GitHub refuses too
            values[name] = "\n".join(lines[i + 1 : end])
            i = end + 1
            continue
        if line:
            assert "=" in line, f"{path.name}: a line that is neither name=value nor name<<DELIMITER: {line!r}"
            name, value = line.split("=", 1)
            values[name] = value
        i += 1
    return values


def run_action(inputs: dict[str, str], workspace: Path, tmp: Path) -> Run:
    """The composite's steps in order, as the runner runs them."""
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    assert action["runs"]["using"] == "composite"
    declared = action["inputs"]
    unknown = set(inputs) - set(declared)
    assert not unknown, f"inputs action.yml does not declare: {unknown}"
    steps = action["runs"]["steps"]
    run = Run(inputs={}, step_ids={step["id"] for step in steps if "id" in step})
    for name, spec in declared.items():  # defaults may hold expressions (github.token), evaluated like any other
        run.inputs[name] = inputs.get(name, spec.get("default", ""))
    run.inputs = {name: substitute(str(value), run) for name, value in run.inputs.items()}
    (tmp / "runner-temp").mkdir(exist_ok=True)
    base = {
        "PATH": f"{tmp / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_ACTION_PATH": str(REPO),
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_REPOSITORY": REPOSITORY,
        "RUNNER_TEMP": str(tmp / "runner-temp"),
        "FAKE_GH_STATE": str(tmp / "gh-state.json"),
    }
    for number, step in enumerate(steps):
        name = step.get("name", f"step {number}")
        if not condition(step.get("if"), run):
            run.steps.append({"name": name, "ran": False, "why": "if"})
            continue
        if "uses" in step:  # setup-python, upload-artifact: GitHub's own actions, not run here
            if "id" in step:
                run.outputs[step["id"]] = dict(USES_OUTPUTS[step["uses"]])
            run.steps.append({"name": name, "ran": False, "why": "uses", "with": {k: substitute(str(v), run) for k, v in step.get("with", {}).items()}})
            continue
        assert step.get("shell") == "bash", f"{name}: the harness runs bash steps only"
        files = {key: tmp / f"{key.lower()}-{number}" for key in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_ENV")}
        for path in files.values():
            path.write_text("", encoding="utf-8")
        script = tmp / f"step-{number}.sh"
        script.write_text(substitute(step["run"], run), encoding="utf-8")
        env = {**base, **run.env, **{k: substitute(str(v), run) for k, v in step.get("env", {}).items()}}
        env.update({key: str(path) for key, path in files.items()})
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=workspace, env=env, capture_output=True, text=True, timeout=120,
        )
        if "id" in step:
            run.outputs[step["id"]] = read_commands_file(files["GITHUB_OUTPUT"])
        run.env.update(read_commands_file(files["GITHUB_ENV"]))
        run.summary += files["GITHUB_STEP_SUMMARY"].read_text(encoding="utf-8")
        run.failed = run.failed or done.returncode != 0
        run.steps.append({"name": name, "ran": True, "code": done.returncode, "log": done.stdout + done.stderr})
    run.action_outputs = {name: substitute(spec["value"], run) for name, spec in action["outputs"].items()}
    return run


FAKE_GH = r'''
"""A fake `gh` for one repository's pull-request comments: answers the calls comment.sh makes as GitHub would, records
each one, and refuses any other."""
import json, os, re, sys

state_path = os.environ["FAKE_GH_STATE"]
with open(state_path, encoding="utf-8") as f:
    state = json.load(f)
args, method, fields, flags, endpoint = sys.argv[1:], "GET", {}, set(), None
assert args and args[0] == "api", f"fake gh: only `gh api`, not {args}"
rest = iter(args[1:])
for arg in rest:
    if arg == "--method":
        method = next(rest)
    elif arg == "-F":
        key, value = next(rest).split("=", 1)
        if value.startswith("@"):
            with open(value[1:], encoding="utf-8") as f:
                value = f.read()
        fields[key] = value
    elif arg.startswith("--"):
        flags.add(arg)
    else:
        assert endpoint is None, f"fake gh: two endpoints in {args}"
        endpoint = arg
login = state["tokens"].get(os.environ.get("GH_TOKEN"))
assert login, "fake gh: a token GitHub does not know"
state["calls"].append({"method": method, "endpoint": endpoint, "flags": sorted(flags), "fields": fields,
                       "token": os.environ.get("GH_TOKEN")})
prefix = "repos/" + os.environ["GITHUB_REPOSITORY"] + "/issues/"
listing = re.fullmatch(re.escape(prefix) + r"(\d+)/comments", endpoint or "")
edit = re.fullmatch(re.escape(prefix) + r"comments/(\d+)", endpoint or "")
code = 0
if method == "GET" and listing and flags == {"--paginate", "--slurp"} and not fields:
    mine = [c for c in state["comments"] if c["pr"] == listing[1]]
    print(json.dumps([mine[i:i + 2] for i in range(0, len(mine), 2)] or [[]]))  # pages of two: paging is exercised
elif method == "POST" and listing and set(fields) == {"body"} and not flags:
    state["next_id"] += 1
    comment = {"id": state["next_id"], "pr": listing[1], "body": fields["body"], "user": {"login": login, "type": "Bot"}}
    state["comments"].append(comment)
    print(json.dumps(comment))
elif method == "PATCH" and edit and set(fields) == {"body"} and not flags:
    found = [c for c in state["comments"] if c["id"] == int(edit[1])]
    if found and (found[0]["user"]["login"] != login or state.get("edits_refused")):
        sys.stderr.write("gh: Resource not accessible by integration (HTTP 403)\n")
        code = 1
    elif found:
        found[0]["body"] = fields["body"]
        print(json.dumps(found[0]))
    else:
        sys.stderr.write("gh: Not Found (HTTP 404)\n")
        code = 1
else:
    sys.stderr.write(f"fake gh: a call GitHub's comments API does not answer: {args}\n")
    code = 1
with open(state_path, "w", encoding="utf-8") as f:
    json.dump(state, f)
sys.exit(code)
'''


def _bias_pair():
    spec = importlib.util.spec_from_file_location("bias_pair_for_action", FIXTURES / "bias_pair.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A repository's checkout with the two audits (and their HTML), a fake `gh` and its comments."""
    pair, work = _bias_pair(), tmp_path / "workspace"
    for name in ("biased", "debiased"):
        (work / name).mkdir(parents=True)
        (work / name / "audit.json").write_text(json.dumps(pair.make(name)), encoding="utf-8")
        (work / name / "audit.html").write_text("<html></html>", encoding="utf-8")
    (tmp_path / "bin").mkdir()
    gh = tmp_path / "bin" / "gh"
    gh.write_text(f"#!{sys.executable}\n{FAKE_GH}", encoding="utf-8")
    gh.chmod(0o755)
    author, bot = {"login": "octocat", "type": "User"}, {"login": BOT, "type": "Bot"}
    others = [{"id": 1, "pr": PR, "body": "Looks good.", "user": author},
              {"id": 2, "pr": PR, "body": f"quoting {MARKER} mid-text", "user": bot},
              {"id": 3, "pr": "8", "body": f"{MARKER}\nanother pull request's", "user": bot}]
    save_state(tmp_path, {"comments": others, "calls": [], "next_id": 100, "tokens": {"fake-token": BOT}})
    return work


def save_state(tmp_path: Path, state: dict) -> None:
    (tmp_path / "gh-state.json").write_text(json.dumps(state), encoding="utf-8")


def gh_state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "gh-state.json").read_text(encoding="utf-8"))


def test_a_passing_gate_sets_its_outputs_writes_the_summary_comments_and_passes(workspace, tmp_path):
    """The job a pull request that improves the model gets: exit-code 0 and PASS as outputs (for later steps), the
    summary with the largest changes in the job summary, one new comment, and a last step that passes."""
    inputs = {"audit": "debiased/audit.json", "baseline": "biased/audit.json", "rules": PASS_RULES, "comment": "true",
              "install": "false"}
    run = run_action(inputs, workspace, tmp_path)
    assert [(s["name"], s["ran"]) for s in run.steps] == [
        ("Set up Python", False), ("Install torch and biasaudit", False), ("Gate", True),
        ("Upload the audits and the gate's reports", False), ("Link the uploaded files in the job summary", True),
        ("Comment on the pull request", True), ("Fail on FAIL or ERROR", True),
    ]
    assert run.step("Set up Python")["why"] == run.step("Install torch and biasaudit")["why"] == "if"  # install: false
    assert all(s["code"] == 0 for s in run.steps if s["ran"]), [s["log"][-2000:] for s in run.steps if s["ran"]]
    assert not run.failed
    assert run.action_outputs["exit-code"] == "0" and run.action_outputs["status"] == "PASS"
    assert json.loads((workspace / run.action_outputs["json"]).read_text(encoding="utf-8"))["status"] == "PASS"
    assert run.summary.startswith("### ✅ biasaudit gate: PASS") and "#### Largest changes against the baseline" in run.summary
    assert "::notice title=biasaudit gate: max_worst_group_drop[full] PASS::" in run.step("Gate")["log"]  # annotations

    upload = run.step("Upload the audits and the gate's reports")
    assert upload["why"] == "uses" and upload["with"]["path"].splitlines() == [
        "biasaudit-gate", "debiased/audit.json", "debiased/audit.html", "biased/audit.json", "biased/audit.html"]
    state = gh_state(tmp_path)
    posted = [c for c in state["calls"] if c["method"] != "GET"]
    assert [(c["method"], c["endpoint"]) for c in posted] == [("POST", f"repos/{REPOSITORY}/issues/{PR}/comments")]
    summary = (workspace / "biasaudit-gate" / "summary.md").read_text(encoding="utf-8")
    # The summary's links are workspace paths, dead in a comment: the comment and the job summary name the artifact.
    where = f"Audit files (the HTML reports linked above, gate.json, gate.xml): {ARTIFACT_URL}\n"
    assert "](../debiased/audit.html)" in summary  # still right for a local copy of the out folder
    assert posted[0]["fields"]["body"] == f"{MARKER}\n{summary}\n{where}" and posted[0]["token"] == "fake-token"
    assert run.summary.endswith(f"\n{where}") and run.action_outputs["artifact-url"] == ARTIFACT_URL
    assert [c["id"] for c in state["comments"]] == [1, 2, 3, 101]  # the others untouched, one new


def test_a_failing_gate_still_summarises_and_updates_its_comment_then_fails_the_last_step(workspace, tmp_path):
    """A change that brings the shortcut back: the reviewer must still get the summary and the comment (updated in
    place, not a second one), and the job must fail, at the last step, with the gate's exit code."""
    state = gh_state(tmp_path)
    state["comments"].append(
        {"id": 50, "pr": PR, "body": f"{MARKER}\n### ✅ biasaudit gate: PASS\n(an earlier run)",
         "user": {"login": BOT, "type": "Bot"}}
    )
    save_state(tmp_path, state)
    inputs = {"audit": "biased/audit.json", "baseline": "debiased/audit.json", "rules": PASS_RULES, "comment": "true",
              "install": "false"}
    run = run_action(inputs, workspace, tmp_path)
    assert run.action_outputs["exit-code"] == "1" and run.action_outputs["status"] == "FAIL"
    codes = {s["name"]: s.get("code") for s in run.steps if s["ran"]}
    assert codes == {"Gate": 0, "Link the uploaded files in the job summary": 0, "Comment on the pull request": 0,
                     "Fail on FAIL or ERROR": 1}, run.steps
    assert run.failed and "::error title=biasaudit gate::FAIL (exit 1)" in run.step("Fail on FAIL or ERROR")["log"]
    assert run.summary.startswith("### ❌ biasaudit gate: FAIL")
    assert "| missing:text accuracy | 62.5% | 10.0% | -52.5 [-59.2, -50.0] |" in run.summary
    calls = [(c["method"], c["endpoint"]) for c in gh_state(tmp_path)["calls"]]
    assert calls == [("GET", f"repos/{REPOSITORY}/issues/{PR}/comments"), ("PATCH", f"repos/{REPOSITORY}/issues/comments/50")]
    comment = next(c for c in gh_state(tmp_path)["comments"] if c["id"] == 50)
    assert comment["body"].startswith(f"{MARKER}\n### ❌ biasaudit gate: FAIL") and len(gh_state(tmp_path)["comments"]) == 4


def test_a_gate_that_cannot_judge_is_error_with_a_summary_and_no_comment_unless_asked(workspace, tmp_path):
    """No rule given: the gate exits 2 before any verdict. The job summary must still say why, the status must read
    ERROR (not an empty output that a later `if:` misreads), `comment: false` (the default) must not call gh, and the
    job must fail with 2."""
    run = run_action({"audit": "debiased/audit.json", "install": "false"}, workspace, tmp_path)
    assert run.action_outputs["exit-code"] == "2" and run.action_outputs["status"] == "ERROR"
    assert run.action_outputs["json"] == ""  # no verdict to read
    assert run.step("Comment on the pull request") == {"name": "Comment on the pull request", "ran": False, "why": "if"}
    assert gh_state(tmp_path)["calls"] == []
    assert run.summary.startswith("### 🛑 biasaudit gate: ERROR") and "No gate rule was given" in run.summary
    assert run.step("Fail on FAIL or ERROR")["code"] == 2


def test_an_error_after_a_passing_run_leaves_no_junit_report_of_the_earlier_run(workspace, tmp_path):
    """A self-hosted runner keeps its workspace: a pull request whose audit is missing must not upload (and a JUnit step
    must not show green) the gate.xml a passing run left in the same out folder."""
    passing = {"audit": "debiased/audit.json", "baseline": "biased/audit.json", "rules": PASS_RULES, "install": "false"}
    assert run_action(passing, workspace, tmp_path).action_outputs["status"] == "PASS"
    assert (workspace / "biasaudit-gate" / "gate.xml").is_file()
    run = run_action({**passing, "audit": "missing/audit.json"}, workspace, tmp_path)
    assert run.action_outputs["status"] == "ERROR" and run.action_outputs["exit-code"] == "2"
    out = workspace / "biasaudit-gate"
    assert not (out / "gate.xml").exists() and (out / "gate.json").read_text(encoding="utf-8") == ""  # stdout, empty
    assert run.action_outputs["json"] == ""
    assert "written in biasaudit-gate/: summary.md gate.log" in run.step("Gate")["log"]


def test_the_harness_refuses_what_it_does_not_model():
    """The harness would pass an action whose expressions it silently replaced with nothing; it refuses instead, and
    every expression in action.yml, `uses:` steps included, is one it knows."""
    run = Run(inputs={"comment": "true"}, step_ids={"gate"})
    for unknown in ("${{ secrets.TOKEN }}", "${{ inputs.missing }}", "${{ steps.other.outputs.x }}", "${{ github.sha }}"):
        with pytest.raises(AssertionError, match="does not"):
            substitute(unknown, run)
    with pytest.raises(AssertionError, match="does not know the condition"):
        condition("github.event_name == 'pull_request'", run)
    assert condition("always() && inputs.comment == 'true'", run) and not condition("inputs.comment != 'true'", run)
    run.failed = True
    assert not condition(None, run) and condition("always()", run) and not condition("inputs.comment == 'true'", run)
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    ids = {step["id"] for step in action["runs"]["steps"] if "id" in step}
    known = Run(inputs={name: "" for name in action["inputs"]}, step_ids=ids)
    for expression in EXPRESSION.findall(ACTION.read_text(encoding="utf-8")):
        evaluate(expression, known)
    for step in action["runs"]["steps"]:
        condition(step.get("if"), known)
        assert "${{" not in step.get("run", ""), f"{step['name']}: an expression inside run: can inject shell code"


@pytest.mark.parametrize("case", ["someone else's marked comment", "an edit GitHub refuses"])
def test_a_marked_comment_the_action_cannot_own_gets_a_new_comment_beside_it(workspace, tmp_path, case):
    """Anyone can write the marker: a pull request's author who posts it first must not take the verdict's place (the
    edit of their comment fails, or rewrites their words), and a comment that cannot be edited must not leave the
    reviewers without the verdict. Either way a new comment is posted, and the other one is left as it was."""
    state = gh_state(tmp_path)
    login = "mallory" if case == "someone else's marked comment" else BOT
    planted = {"id": 40, "pr": PR, "body": f"{MARKER}\n### ✅ biasaudit gate: PASS", "user": {"login": login, "type": "User"}}
    state["comments"].insert(0, planted)
    state["edits_refused"] = case == "an edit GitHub refuses"
    save_state(tmp_path, state)
    inputs = {"audit": "biased/audit.json", "baseline": "debiased/audit.json", "rules": PASS_RULES, "comment": "true",
              "install": "false"}
    run = run_action(inputs, workspace, tmp_path)
    state = gh_state(tmp_path)
    calls = [(c["method"], c["endpoint"].rsplit("/", 2)[-2:]) for c in state["calls"]]
    edits = [("PATCH", ["comments", "40"])] if case == "an edit GitHub refuses" else []
    assert calls == [("GET", [PR, "comments"]), *edits, ("POST", [PR, "comments"])], calls
    assert next(c for c in state["comments"] if c["id"] == 40) == planted
    new = state["comments"][-1]
    assert new["id"] == 101 and new["body"].startswith(f"{MARKER}\n### ❌ biasaudit gate: FAIL") and new["user"]["login"] == BOT
    assert run.step("Comment on the pull request")["code"] == 0


def test_without_an_artifact_the_comment_says_its_links_are_workspace_paths(workspace, tmp_path):
    """`artifact-name: ''` uploads nothing: the comment must not promise an artifact, and must say why its links lead
    nowhere on GitHub."""
    inputs = {"audit": "debiased/audit.json", "baseline": "biased/audit.json", "rules": PASS_RULES, "comment": "true",
              "install": "false", "artifact-name": ""}
    run = run_action(inputs, workspace, tmp_path)
    assert run.step("Link the uploaded files in the job summary")["ran"] is False and run.action_outputs["artifact-url"] == ""
    body = gh_state(tmp_path)["comments"][-1]["body"]
    assert body.endswith("Audit files: the links above are paths in the workflow's workspace; no artifact was uploaded.\n")
    assert "Audit files" not in run.summary


def test_a_path_input_with_a_line_break_is_refused_and_adds_no_step_output(workspace, tmp_path):
    """A path's line break would end the `files` block of GITHUB_OUTPUT and let the rest of the name set outputs of
    its own (here `status=PASS` for a gate that never ran); the step refuses it, with ERROR and exit 2."""
    planted = "x\nBIASAUDIT_FILES_END\nstatus=PASS\ny"
    (workspace / planted).mkdir()
    (workspace / planted / "audit.json").write_text((workspace / "biased" / "audit.json").read_text(encoding="utf-8"))
    inputs = {"audit": "debiased/audit.json", "baseline": f"{planted}/audit.json", "rules": PASS_RULES, "install": "false"}
    run = run_action(inputs, workspace, tmp_path)
    assert set(run.outputs["gate"]) == {"exit-code", "status", "summary", "json", "files"}
    assert run.action_outputs["status"] == "ERROR" and run.action_outputs["exit-code"] == "2"
    assert run.outputs["gate"]["files"] == "biasaudit-gate" and run.action_outputs["json"] == ""
    assert run.summary.startswith(
        "### 🛑 biasaudit gate: ERROR\n\nThe action's `baseline` input holds a line break; expected one path on one line.\n"
    )
    assert run.step("Fail on FAIL or ERROR")["code"] == 2
    # The block's delimiter is drawn per run: no path can be written to end it.
    raw = "".join(path.read_text(encoding="utf-8") for path in tmp_path.glob("github_output-*"))
    assert re.search(r"^files<<BIASAUDIT_[0-9a-f]{32}$", raw, re.M), raw


@pytest.mark.parametrize("blocked", ["out is a file", "gate.json is a folder"])
def test_a_gate_whose_files_cannot_be_written_is_error_with_exit_2_not_a_failed_rule(workspace, tmp_path, blocked):
    """The shell exits 1 when it cannot open the gate's output, before the gate runs; read as the gate's code, that
    says "a rule failed" beside status ERROR. A gate without a verdict is exit 2, and the job summary says why."""
    if blocked == "out is a file":
        (workspace / "biasaudit-gate").write_text("not a folder", encoding="utf-8")
    else:
        (workspace / "biasaudit-gate" / "gate.json").mkdir(parents=True)
    inputs = {"audit": "debiased/audit.json", "baseline": "biased/audit.json", "rules": PASS_RULES, "install": "false"}
    run = run_action(inputs, workspace, tmp_path)
    assert run.action_outputs["status"] == "ERROR" and run.action_outputs["exit-code"] == "2", run.steps
    assert run.action_outputs["json"] == "" and run.step("Fail on FAIL or ERROR")["code"] == 2
    assert run.summary.startswith("### 🛑 biasaudit gate: ERROR")
    why = "`out` input, biasaudit-gate, is not a folder" if blocked == "out is a file" else "gate.json: Is a directory"
    assert why in run.summary, run.summary
    assert (workspace / run.action_outputs["summary"]).read_text(encoding="utf-8").startswith("### 🛑 biasaudit gate: ERROR")
