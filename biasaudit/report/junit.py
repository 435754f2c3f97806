"""The gate's verdicts as JUnit XML, the test report format common CI systems display: one test case
per rule verdict, a <failure> for FAIL, an <error> for ERROR, and WARN as a passing case whose
system-out says why it warned. The suite's properties say how changes were judged (paired or not, what
--significant means, which JSD statistic), so a CI page shows the basis of every verdict."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from biasaudit._core.files import atomic_write_bytes


def gate_junit_xml(result: Mapping[str, Any]) -> bytes:
    rules = result["rules"]

    def count(status: str) -> int:
        return sum(r["status"] == status for r in rules)

    suites = ET.Element("testsuites", name="biasaudit gate")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"biasaudit gate {result['current']}",
        tests=str(len(rules)),
        failures=str(count("FAIL")),
        errors=str(count("ERROR")),
        skipped="0",
    )
    properties = ET.SubElement(suite, "properties")
    for key in ("baseline", "paired", "unpaired_reason", "significant", "significant_means", "jsd_statistic"):
        if result.get(key) is not None:
            ET.SubElement(
                properties,
                "property",
                name=key,
                value=json.dumps(result[key]) if isinstance(result[key], bool) else str(result[key]),
            )
    for rule in rules:
        case = ET.SubElement(suite, "testcase", classname="biasaudit.gate", name=rule["rule"])
        figures = json.dumps(rule["figures"], sort_keys=True)
        if rule["status"] == "FAIL":
            ET.SubElement(case, "failure", message=rule["message"], type="GateFailure").text = figures
        elif rule["status"] == "ERROR":
            ET.SubElement(case, "error", message=rule["message"], type="GateError").text = figures
        else:
            ET.SubElement(case, "system-out").text = f"{rule['status']}: {rule['message']}\n{figures}"
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def write_gate_junit(result: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_bytes(gate_junit_xml(result), path)
    return path
