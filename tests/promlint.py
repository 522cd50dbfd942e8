"""The rules of `promtool check metrics`, on prometheus_client's own parser.

promtool comes with the Debian package `prometheus` (a 19 MB download, 96 MB
installed, with a web UI and a server the tests do not need), so CI does not
install it; this applies the same lint rules (client_golang's promlint:
help, counter suffixes, base units, unit abbreviations, type in the name,
reserved names and characters, snake_case) to the exposition text. Where
promtool is installed, tests/p2pd/test_metrics.py runs it as well.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

#: Units that have a base unit to use instead (promlint's list, by prefix family).
NON_BASE_UNITS = {
    **dict.fromkeys(
        ("minutes", "hours", "days", "weeks", "milliseconds", "microseconds", "nanoseconds"),
        "seconds",
    ),
    **dict.fromkeys(("kilobytes", "megabytes", "gigabytes", "terabytes", "petabytes"), "bytes"),
    **dict.fromkeys(("kibibytes", "mebibytes", "gibibytes", "tebibytes"), "bytes"),
    "bits": "bytes",
    "percent": "ratio",
    "kelvin": "celsius",
}
#: Abbreviated units promlint refuses as words of a name.
ABBREVIATIONS = frozenset(
    ("s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d")
)
TYPES_IN_NAME = ("counter", "gauge", "histogram", "summary")
CAMEL = re.compile(r"[a-z][A-Z]")
TYPE_LINE = re.compile(r"# TYPE (\S+) (\S+)")


def lint(text: str) -> list[str]:
    """What promtool would say about ``text``; [] when it would say nothing."""
    problems: list[str] = []
    # The suffix as declared: the parser adds "_total" to a counter's samples itself.
    for line in text.splitlines():
        match = TYPE_LINE.match(line)
        if match is None:
            continue
        declared, kind = match.groups()
        if kind == "counter" and not declared.endswith("_total"):
            problems.append(f"{declared}: counter metrics should have '_total' suffix")
        elif kind != "counter" and declared.endswith("_total"):
            problems.append(f"{declared}: non-counter metrics should not have '_total' suffix")
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family in text_string_to_metric_families(text):
        name, kind = family.name, family.type
        said = problems.append
        if not family.documentation:
            said(f"{name}: no help text")
        words = name.split("_")
        for word in words:
            if word in NON_BASE_UNITS:
                said(f"{name}: use base unit {NON_BASE_UNITS[word]!r} instead of {word!r}")
            if word in ABBREVIATIONS:
                said(f"{name}: metric names should not contain abbreviated units ({word!r})")
        for type_name in TYPES_IN_NAME:
            if type_name in words:
                said(f"{name}: metric name should not include type {type_name!r}")
        if ":" in name:
            said(f"{name}: metric names should not contain ':'")
        if CAMEL.search(name):
            said(f"{name}: metric names should be written in 'snake_case' not 'camelCase'")
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            if (sample.name, labels) in seen:
                said(f"{sample.name}{dict(labels)}: duplicate series")
            seen.add((sample.name, labels))
            for label in sample.labels:
                if CAMEL.search(label):
                    said(f"{name}: label names should be written in 'snake_case': {label!r}")
            if kind not in ("histogram", "gaugehistogram") and "le" in sample.labels:
                said(f"{name}: non-histograms should not have 'le' label")
            if kind != "summary" and "quantile" in sample.labels:
                said(f"{name}: non-summaries should not have 'quantile' label")
        if kind in ("histogram", "summary") and name.endswith(("_count", "_sum", "_bucket")):
            said(f"{name}: {kind} metrics should not end in _count, _sum or _bucket")
    return problems
