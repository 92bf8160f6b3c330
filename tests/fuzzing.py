"""Fuzz the HTTP API from its OpenAPI schema with schemathesis; count statuses per endpoint.

Shared by ``tests/test_fuzz.py`` (a few hundred cases per endpoint, in CI) and
``benchmarks/fuzz.py`` (1,000+ per endpoint). Every operation is run with schema-valid
(positive) and schema-violating (negative) cases against the real app over in-process
services. A failure is any 5xx, an error answer (4xx) without the ``{code, message,
details}`` shape, or an exception out of the app.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.errors
from hypothesis import HealthCheck, Phase

ERROR_KEYS = {"code", "message", "details"}


@dataclass
class OperationReport:
    """Cases run against one ``METHOD /path`` and what came back."""

    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def check_answer(status: int, body: bytes, content_type: str) -> str | None:
    """Why an answer breaks the API's promises, or ``None`` when it keeps them."""
    if status >= 500:
        return f"server error {status}: {body[:300]!r}"
    if 400 <= status < 600:
        if "json" not in content_type:
            return f"{status} without a JSON error body ({content_type!r}): {body[:200]!r}"
        try:
            doc = json.loads(body)
        except ValueError:
            return f"{status} with an unparsable body: {body[:200]!r}"
        if not isinstance(doc, dict) or set(doc) != ERROR_KEYS or not isinstance(
                doc.get("code"), str) or not isinstance(doc.get("message"), str):
            return f"{status} without the error shape: {body[:300]!r}"
    return None


def fuzz_app(app: Any, *, max_examples: int, seed: int = 0,
             skip: frozenset[tuple[str, str]] = frozenset()) -> dict[str, OperationReport]:
    """Run ``max_examples`` positive and as many negative cases per operation of ``app``.

    Returns the report per ``"METHOD /path"``. Where no case can violate the schema, the
    negative half is replaced by positive cases from another seed. Operations whose inputs
    cannot produce that many distinct cases (``GET /healthz``) stop early; their ``cases``
    says how many ran.
    """
    import schemathesis
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    reports: dict[str, OperationReport] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in skip:
            continue
        report = reports.setdefault(f"{op.method.upper()} {op.path}", OperationReport())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            before = report.cases
            _run_mode(op, mode, report, max_examples=max_examples, seed=seed)
            if mode is GenerationMode.NEGATIVE and report.cases == before:
                # Nothing can violate the schema (a free-form string path parameter): make
                # the negative half up with more schema-valid cases from another seed.
                _run_mode(op, GenerationMode.POSITIVE, report, max_examples=max_examples,
                          seed=seed + 1)
    return reports


def _run_mode(op: Any, mode: Any, report: OperationReport, *, max_examples: int,
              seed: int) -> None:
    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=max_examples, deadline=None, database=None,
                         phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck), derandomize=False)
    @hypothesis.given(case=op.as_strategy(generation_mode=mode))
    def one(case: Any) -> None:
        report.cases += 1
        try:
            response = case.call()
        except Exception as exc:  # the app raised through the transport: a crash
            report.failures.append(f"{type(exc).__name__}: {exc} for {case.as_curl_command()}")
            return
        report.statuses[response.status_code] += 1
        ctype = response.headers.get("content-type") or ""
        if isinstance(ctype, list):  # schemathesis keeps every value of a header
            ctype = ",".join(ctype)
        why = check_answer(response.status_code, response.content, ctype)
        if why is not None and len(report.failures) < 20:
            report.failures.append(f"{why} for {case.as_curl_command()}")

    try:
        one()
    except hypothesis.errors.Unsatisfiable:
        # Nothing in the operation can be made invalid (no parameters, no body).
        pass


def format_table(reports: dict[str, OperationReport]) -> str:
    """A Markdown table: endpoint, cases, statuses seen, 5xx, failures."""
    lines = ["| endpoint | cases | statuses seen (count) | 5xx | failures |",
             "| --- | ---: | --- | ---: | ---: |"]
    for name, r in sorted(reports.items()):
        seen = ", ".join(f"{s}: {n}" for s, n in sorted(r.statuses.items()))
        n5xx = sum(n for s, n in r.statuses.items() if s >= 500)
        lines.append(f"| `{name}` | {r.cases} | {seen} | {n5xx} | {len(r.failures)} |")
    return "\n".join(lines)
