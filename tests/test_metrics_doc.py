"""docs/metrics.md lists exactly the metrics the code defines, as they are scraped, with their
types and labels: the table cannot drift from the two metrics modules."""

from __future__ import annotations

import re

from ray.util.metrics import Counter, Gauge, Histogram, Metric

from pipeline.metrics import JobMetrics
from tests.conftest import REPO
from workers.metrics import StageMetrics

KINDS = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}
ROW = re.compile(r"^\| `(ray_[a-z_]+)` \| (\w+) \|([^|]*)\|")


def _defined() -> dict[str, tuple[str, frozenset[str]]]:
    """Every metric the driver and a stage replica make (outside Ray: nothing is recorded), by its
    scraped name: Ray's ``ray_`` prefix, and ``_total`` after a counter's name."""
    found = {}
    for owner in (JobMetrics(), StageMetrics("semantic", 0)):
        for metric in vars(owner).values():
            if isinstance(metric, Metric):
                kind = KINDS[type(metric)]
                name = f"ray_{metric.info['name']}" + ("_total" if kind == "counter" else "")
                found[name] = (kind, frozenset(metric.info["tag_keys"]))
    return found


def _documented() -> dict[str, tuple[str, frozenset[str]]]:
    rows = {}
    for line in (REPO / "docs" / "metrics.md").read_text().splitlines():
        if match := ROW.match(line):
            name, kind, labels = match.groups()
            label_names = labels.split("(")[0]  # the values in brackets are not label names
            rows[name] = (kind, frozenset(re.findall(r"`(\w+)`", label_names)))
    return rows


def test_the_metrics_doc_names_every_metric_the_code_defines_and_no_other():
    defined, documented = _defined(), _documented()
    assert len(defined) == 14  # four of the job's, ten of each stage replica's
    assert documented == defined


def test_the_readme_links_the_metrics_doc():
    assert "(docs/metrics.md)" in (REPO / "README.md").read_text()
