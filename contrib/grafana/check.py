#!/usr/bin/env python3
"""Keeps the Grafana dashboard honest: every metric and label its PromQL uses must be one that
`kvmtrace serve` exports.

    check.py METRICS_TXT... [--dashboard kvmtrace.json] [--prometheus URL]

METRICS_TXT is a /metrics body of `kvmtrace serve`, best taken while a VM runs so that the
per-VM series exist:

    curl -s http://127.0.0.1:9669/metrics > metrics.txt

prometheus-client leaves out a metric that has no series at all, so one host may not show
everything: a kvm_pvm host has no kvm_exit, hence no kvmtrace_exits_total or
kvmtrace_exit_latency_seconds. Give several bodies (from different hosts) to check against all
of them together.

For every PromQL expression of the dashboard (panel targets and the variables' label_values()
queries) it checks that
  1. each metric name has samples in METRICS_TXT (a metric declared by # TYPE but without
     samples is reported as a warning: its series did not exist when the body was taken);
  2. each label in a selector's matchers exists on that metric (or is one Prometheus adds to
     every target: instance, job);
  3. each label of by / without / on / ignoring / group_left / group_right exists on some
     metric of the expression.
When promtool is on PATH, every expression must also parse (as a recording rule for
`promtool check rules`). With --prometheus URL (a Prometheus server that scrapes the exporter)
it also evaluates every expression there, the dashboard variables replaced by "match
anything", and checks that it is valid and that the labels its legend uses ({{vm}}) are in the
result. An empty result is a warning (the series may not exist in that recording).

Python 3 standard library only. Exit status 0 when everything checks, 1 otherwise.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"instance", "job"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"bool", "offset", "and", "or", "unless", "atan2", "inf", "nan", "start", "end"}

TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matchop>=~|!~|!=)
  | (?P<op>==|<=|>=|[-+*/%^<>=@])
  | (?P<punct>[{}()\[\],])
    """,
    re.VERBOSE,
)


class PromQLError(Exception):
    pass


def grafana_vars(expr, rng="5m"):
    """The expression with Grafana's variables replaced: time ranges by `rng`, everything else
    (used in label matchers) by a regular expression that matches any value."""
    expr = re.sub(r"\$(__rate_interval|__interval|__range)\b", rng, expr)
    expr = re.sub(r"\$\{(__rate_interval|__interval|__range)\}", rng, expr)
    expr = re.sub(r"\$(__range_s|__interval_ms|__range_ms)\b", "300", expr)
    expr = re.sub(r"\$\{[A-Za-z0-9_]+(?::[a-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_]+\]\]", ".+", expr)
    return expr


def tokens(expr):
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise PromQLError(f"cannot read {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def references(expr):
    """(selectors, grouping labels) of a PromQL expression: selectors as (metric, [labels])."""
    toks = tokens(expr)
    selectors, grouping = [], set()
    i = 0

    def matchers(i):
        """Reads `{label op "value", ...}` from toks[i] == '{'; returns ({label: value of =}, i)."""
        labels = {}
        i += 1
        while toks[i][1] != "}":
            kind, name = toks[i]
            if kind != "ident" or toks[i + 1][0] not in ("matchop", "op") or toks[i + 2][0] != "string":
                raise PromQLError(f"bad label matcher near {name!r} in {expr!r}")
            labels[name] = toks[i + 2][1][1:-1] if toks[i + 1][1] == "=" else None
            i += 3
            if toks[i][1] == ",":
                i += 1
        return labels, i + 1

    try:
        while i < len(toks):
            kind, text = toks[i]
            nxt = toks[i + 1][1] if i + 1 < len(toks) else None
            if text == "[":  # a range or subquery: durations only
                while toks[i][1] != "]":
                    i += 1
                i += 1
            elif kind == "ident" and text in GROUPING and nxt == "(":
                i += 2
                while toks[i][1] != ")":
                    if toks[i][0] == "ident":
                        grouping.add(toks[i][1])
                    i += 1
                i += 1
            elif kind == "ident" and text == "offset":
                i += 2
            elif kind == "ident" and (nxt == "(" or nxt in ("by", "without")):
                i += 1  # a function, or an aggregation (`sum by (x) (...)`)
            elif kind == "ident" and text.lower() not in KEYWORDS:
                labels = {}
                i += 1
                if nxt == "{":
                    labels, i = matchers(i)
                selectors.append((text, labels))
            elif text == "{":  # a selector by matchers alone: {__name__="x", ...}
                labels, i = matchers(i)
                name = labels.pop("__name__", None)
                if not name:
                    raise PromQLError(f"a selector without a metric name in {expr!r}")
                selectors.append((name, labels))
            else:
                i += 1
    except IndexError:
        raise PromQLError(f"unbalanced brackets in {expr!r}") from None
    return selectors, grouping


def read_exposition(path, samples, declared):
    """Adds to {sample name: set of label names} and to the names # TYPE declares (with the
    sample names each type has: a counter's _total, a histogram's _bucket / _sum / _count)."""
    label = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*"')
    for line in Path(path).read_text().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            base = name.removesuffix("_total") if kind == "counter" else name
            declared |= {
                "counter": {base + "_total"},
                "histogram": {name + "_bucket", name + "_sum", name + "_count"},
                "summary": {name, name + "_sum", name + "_count"},
            }.get(kind, {name})
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s", line)
        if not m:
            raise SystemExit(f"{path}: not an exposition line: {line!r}")
        names = samples.setdefault(m.group(1), set())
        names.update(label.findall(m.group(2) or ""))


def expressions(dashboard):
    """(where, expression, legend) of every PromQL expression in the dashboard."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title") or where
            if isinstance(node.get("expr"), str) and node["expr"].strip():
                found.append((f"{title} [{node.get('refId', '?')}]", node["expr"], node.get("legendFormat", "")))
            for v in node.values():
                walk(v, title)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    walk(dashboard.get("panels", []), "dashboard")
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else q or ""
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q)
        if m:
            # The label must come from the metric: a legend-like check of the one label.
            found.append((f"variable ${var['name']}", m.group(1), "{{" + m.group(2) + "}}"))
        elif re.fullmatch(r"\s*query_result\((.*)\)\s*", q):
            found.append((f"variable ${var['name']}", re.fullmatch(r"\s*query_result\((.*)\)\s*", q).group(1), ""))
        elif q:
            found.append((f"variable ${var['name']}", None, f"cannot check query {q!r}"))
    return found


def legend_labels(legend):
    return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend or ""))


def query(url, expr):
    api = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(api, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400: the query did not parse or evaluate
        return json.load(e)
    except OSError as e:  # not there at all
        raise SystemExit(f"check.py: cannot query {url}: {e}")


def main():
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics", nargs="+", help="/metrics bodies of kvmtrace serve")
    p.add_argument("--dashboard", default=here / "kvmtrace.json", type=Path)
    p.add_argument("--prometheus", metavar="URL", help="also evaluate every expression on this Prometheus")
    p.add_argument("--range", default="5m", help="what $__rate_interval and $__range become (default 5m)")
    args = p.parse_args()

    samples, declared = {}, set()
    for path in args.metrics:
        read_exposition(path, samples, declared)
    bodies = " ".join(args.metrics)
    dashboard = json.loads(args.dashboard.read_text())
    errors, warnings = [], []
    used = {}  # metric -> places
    for where, expr, legend in expressions(dashboard):
        if expr is None:
            errors.append(f"{where}: {legend}")
            continue
        try:
            selectors, grouping = references(grafana_vars(expr, args.range))
        except PromQLError as e:
            errors.append(f"{where}: {e}")
            continue
        if not selectors:
            errors.append(f"{where}: no metric in {expr!r}")
        known = set(TARGET_LABELS)
        for metric, labels in selectors:
            used.setdefault(metric, []).append(where)
            if metric in samples:
                known |= samples[metric]
                for l in labels:
                    if l not in samples[metric] and l not in TARGET_LABELS:
                        errors.append(f"{where}: {metric} has no label {l!r} (it has {sorted(samples[metric])})")
            elif metric not in declared:
                errors.append(f"{where}: no metric {metric} in {bodies}")
        if any(m not in samples for m, _ in selectors):
            continue  # reported above; its labels are unknown
        for l in grouping - known:
            errors.append(f"{where}: no metric of the expression has the label {l!r} it groups by")
        if where.startswith("variable") and selectors:
            for l in legend_labels(legend) - known:
                errors.append(f"{where}: label_values() of a label {l!r} its metric does not have")

    promtool = shutil.which("promtool")
    if promtool:
        exprs = [(w, grafana_vars(e, args.range)) for w, e, _ in expressions(dashboard) if e]
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:expr{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            json.dump(rules, f)  # YAML is a superset of JSON
            f.flush()
            r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"promtool check rules: {(r.stdout + r.stderr).strip()}")
        print(f"promtool: {len(exprs)} expressions " + ("parse" if r.returncode == 0 else "do NOT parse"))
    else:
        print("promtool: not on PATH, expressions not parsed")

    print(f"{args.dashboard.name}: {len(used)} metrics in {sum(map(len, used.values()))} selectors")
    for metric in sorted(used):
        if metric in samples:
            status = "ok"
        elif metric in declared:
            status = "declared, no samples"
            warnings.append(f"{metric}: declared in {bodies} but without samples (no such series then)")
        else:
            status = "MISSING"
        print(f"  {status:21} {metric}  ({len(used[metric])} uses)")

    if args.prometheus:
        print(f"evaluating on {args.prometheus}:")
        for where, expr, legend in expressions(dashboard):
            if expr is None:
                continue
            r = query(args.prometheus, grafana_vars(expr, args.range))
            if r.get("status") != "success":
                errors.append(f"{where}: Prometheus refused it: {r.get('error')}")
                print(f"  ERROR  {where}")
                continue
            result = r["data"]["result"]
            have = set().union(*(s["metric"] for s in result)) if result else set()
            missing = legend_labels(legend) - have if result else set()
            if missing:
                errors.append(f"{where}: legend uses {sorted(missing)}, the result has {sorted(have)}")
            if not result:
                warnings.append(f"{where}: no data")
            print(f"  {len(result):4} series  {where}")

    for w in warnings:
        print(f"warning: {w}")
    for e in errors:
        print(f"error: {e}")
    print("ok" if not errors else f"{len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
