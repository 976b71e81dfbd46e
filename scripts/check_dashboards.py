#!/usr/bin/env python3
"""Checks conf/grafana/*.json and conf/prometheus/*.yml against the metrics verge declares.

Run through scripts/check-dashboards, which finds PyYAML and promtool first. What it checks:

- every metric in a PromQL expression (dashboard panels, dashboard variables, alert rules) is
  declared in src/metrics.rs (histograms as NAME_bucket/_sum/_count), or is Prometheus' own `up`;
- every label in a matcher exists on that metric (its declared labels plus the target labels
  `job` and `instance`, plus `le` on _bucket), and matcher values of enumerated labels (result,
  kind, reason, outcome, verdict, cause) are string literals somewhere in src/;
- every label in by/without/on/ignoring/group_left/group_right, in label_replace sources, in
  histogram_quantile (`le`), in a panel's legend ({{label}}) and in alert annotation templates
  ({{ $labels.X }}) exists on the expression it applies to: label sets are worked out through a
  small PromQL parser (aggregations, binary operators with their matching rules, functions), so
  `sum by (route) (x)` is checked against x only;
- a binary operation between two vectors without on()/ignoring() has the same label names on
  both sides (otherwise it silently matches nothing);
- every verge_* selector carries a job matcher naming the right job: the series declared on the
  control registry (`&control` in src/metrics.rs) the control plane's job, every other one the
  nodes' job (verge_build_info either);
- parentheses, brackets and braces balance and every expression parses;
- the dashboard: JSON, schemaVersion, the ${DS_PROMETHEUS} datasource variable, the job/instance/
  route variables, unique panel ids and refIds, panels within the 24-column grid and not
  overlapping, every $variable defined;
- the alerts: every rule has expr, for, labels.severity (critical|warning|info) and the
  annotations summary, description, runbook and runbook_url; unique names; each runbook_url
  (`docs/FILE.md#section`) names a section that exists in that file, one per alert;
- rate(), irate(), increase() and resets() apply to counters only (histogram series count as
  counters), never to a gauge; and in an alert every counter goes through one of them;
- the scrape config: its rule_files exist, its targets include the admin listeners of
  conf/verge.yaml and conf/control/*.yaml and the control plane's listen from
  conf/control/control.yaml; the alerts' job matchers must name its jobs (node metrics the
  nodes' job, verge_control_* the control plane's);
- with promtool (PROMTOOL=path): `promtool check config`, `promtool check rules`, `promtool test
  rules` on conf/prometheus/*.test.yml, and every dashboard query through `promtool check rules`.

Exits 1 with the list of problems, 0 with a one-line summary. With --self-test it breaks a copy
of the tree in a few known ways (a misspelt metric, a label that is not there, a metric renamed in
src/metrics.rs, a missing severity, a runbook section renamed, a raw counter in an alert, rate()
of a gauge) and checks each one is reported.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
METRICS_RS = os.path.join(ROOT, "src", "metrics.rs")
DASHBOARD_DIR = os.path.join(ROOT, "conf", "grafana")
PROM_DIR = os.path.join(ROOT, "conf", "prometheus")
PROM_CONFIG = os.path.join(PROM_DIR, "prometheus.yml")

TARGET_LABELS = {"job", "instance"}
# Series Prometheus itself writes for every target.
BUILTIN_METRICS = {
    "up": set(),
    "scrape_duration_seconds": set(),
    "scrape_samples_scraped": set(),
    "scrape_samples_post_metric_relabeling": set(),
    "scrape_series_added": set(),
}
SEVERITIES = {"critical", "warning", "info"}
# Labels whose values come from the config or the request (route and pool names, addresses,
# status codes): their matcher values are not looked up in the source.
FREE_FORM_LABELS = {"job", "instance", "le", "status", "route", "pool", "backend", "node", "listener", "version"}

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def rel(path):
    return os.path.relpath(path, ROOT)


# ---------------------------------------------------------------------------------------------
# src/metrics.rs


class Metric:
    def __init__(self, name, kind, labels):
        self.name, self.kind, self.labels = name, kind, labels


CTOR = re.compile(
    r"\b(HistogramOpts::new|IntCounter::new|IntGauge::new|Counter::new|Gauge::new|Opts::new"
    r"|plain_gauge|plain_counter|counter|gauge|histogram)\s*\(\s*(?:&\s*(?:registry|node|control)\s*,\s*)?\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
)
KIND = {
    "HistogramOpts::new": "histogram",
    "histogram": "histogram",
    "IntCounter::new": "counter",
    "Counter::new": "counter",
    "counter": "counter",
    "plain_counter": "counter",
    "IntGauge::new": "gauge",
    "Gauge::new": "gauge",
    "plain_gauge": "gauge",
    "gauge": "gauge",
    "Opts::new": "counter_or_gauge",
}


def balanced_end(text, open_idx):
    depth = 0
    i = open_idx
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(text)


def load_source_literals():
    """Every string literal in src/: the values enumerated labels (result, kind, reason...) can take."""
    found = set()
    for dirpath, _, files in os.walk(os.path.join(ROOT, "src")):
        for f in files:
            if f.endswith(".rs"):
                text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                found |= set(re.findall(r'"([a-z0-9_]+)"', text))
    return found


SOURCE_LITERALS = set()
# series name -> "counter" (histogram parts included) or "gauge", from src/metrics.rs
SERIES_KIND = {}
# the series `verge control` exports (declared on `&control`); every other verge_* series is a
# node's, except SHARED_SERIES, which both export
CONTROL_SERIES = set()
SHARED_SERIES = {"verge_build_info"}
# the functions that only make sense over a counter
COUNTER_FUNCS = {"rate", "irate", "increase", "resets"}


def load_metrics():
    """Every metric series name a verge process can expose -> its label names."""
    # src/metrics.rs and its submodules (src/metrics/*.rs), test code left out
    sub = os.path.join(ROOT, "src", "metrics")
    files = [METRICS_RS] + sorted(
        os.path.join(sub, f) for f in (os.listdir(sub) if os.path.isdir(sub) else []) if f.endswith(".rs")
    )
    text = "\n".join(open(f, encoding="utf-8").read().split("#[cfg(test)]")[0] for f in files)
    code = re.sub(r"//[^\n]*", "", text)
    matches = list(CTOR.finditer(code))
    declared = {}
    for i, m in enumerate(matches):
        ctor, name = m.group(1), m.group(2)
        kind = KIND[ctor]
        if kind == "histogram" or ctor == "Opts::new":
            # HistogramVec::new(HistogramOpts::new(..).buckets(..), &["pool"]): the labels follow
            # the options, before the next metric.
            end = matches[i + 1].start() if i + 1 < len(matches) else len(code)
            span = code[m.end():end]
        else:
            span = code[m.start():balanced_end(code, code.index("(", m.start()))]
        lm = re.search(r"&\s*\[([^\]]*)\]", span)
        labels = set(re.findall(r"\"([^\"]+)\"", lm.group(1))) if lm else set()
        if name in declared:
            problem(rel(METRICS_RS), f"metric {name} declared twice")
        declared[name] = Metric(name, kind, labels)
    if len(declared) < 20:
        problem(
            rel(METRICS_RS),
            f"found only {len(declared)} metric declarations; the parser in "
            f"scripts/check_dashboards.py no longer understands this file",
        )
    series = {}
    for m in declared.values():
        if m.kind == "histogram":
            series[m.name + "_bucket"] = m.labels | {"le"}
            series[m.name + "_sum"] = set(m.labels)
            series[m.name + "_count"] = set(m.labels)
            parts = [m.name + "_bucket", m.name + "_sum", m.name + "_count"]
            SERIES_KIND.update({p: "counter" for p in parts})
        else:
            series[m.name] = set(m.labels)
            SERIES_KIND[m.name] = m.kind
    for m in matches:
        # the registry a metric is declared on: the nearest `&node` / `&control` before it
        regs = re.findall(r"&\s*(node|control)\b", code[: m.end()])
        if regs and regs[-1] == "control":
            CONTROL_SERIES.add(m.group(2))
    if not CONTROL_SERIES:
        problem(rel(METRICS_RS), "no metric is declared on the control registry (&control)")
    return declared, series


# ---------------------------------------------------------------------------------------------
# PromQL: a lexer and a Pratt parser producing a small AST, then label-set inference.

AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
RANGE_FUNCS = {
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets",
    "predict_linear", "holt_winters", "double_exponential_smoothing", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "absent_over_time", "mad_over_time",
}
FUNCS = RANGE_FUNCS | {
    "abs", "absent", "ceil", "clamp", "clamp_max", "clamp_min", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "exp", "floor", "histogram_quantile", "histogram_count",
    "histogram_sum", "histogram_fraction", "histogram_avg", "histogram_stddev",
    "histogram_stdvar", "hour", "label_replace", "label_join", "ln", "log2", "log10", "minute",
    "month", "round", "scalar", "sgn", "sort", "sort_desc", "sort_by_label",
    "sort_by_label_desc", "sqrt", "time", "timestamp", "vector", "year", "acos", "acosh", "asin",
    "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad", "pi",
}
SCALAR_FUNCS = {"scalar", "time", "pi"}
BINARY_PRECEDENCE = {
    "or": 1,
    "and": 2, "unless": 2,
    "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
    "+": 4, "-": 4,
    "*": 5, "/": 5, "%": 5, "atan2": 5,
    "^": 6,
}
COMPARISONS = {"==", "!=", "<=", "<", ">=", ">"}
SET_OPS = {"and", "or", "unless"}

TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<dur>(?:\d+(?:ms|s|m|h|d|w|y))+(?![a-zA-Z0-9_]))
  | (?P<num>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|==|!=|<=|>=|[-+*/%^<>=(){}\[\],:@])
    """,
    re.VERBOSE,
)


class PromQLError(Exception):
    pass


def lex(expr):
    toks = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise PromQLError(f"unexpected character {expr[pos]!r} at offset {pos}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        toks.append((kind, m.group(kind), m.start()))
    toks.append(("eof", "", len(expr)))
    return toks


def check_balance(expr):
    """Brackets outside string literals must nest: a separate message beats a parse error."""
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < len(expr) and expr[j] != c:
                j += 2 if (expr[j] == "\\" and c != "`") else 1
            if j >= len(expr):
                return f"unterminated string starting at offset {i}"
            i = j + 1
            continue
        if c in "([{":
            stack.append((c, i))
        elif c in ")]}":
            if not stack or stack[-1][0] != pairs[c]:
                return f"unbalanced {c!r} at offset {i}"
            stack.pop()
        i += 1
    if stack:
        return f"unclosed {stack[-1][0]!r} at offset {stack[-1][1]}"
    return None


class Parser:
    def __init__(self, expr):
        self.expr = expr
        self.toks = lex(expr)
        self.i = 0

    def peek(self, k=0):
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self):
        t = self.toks[self.i]
        self.i += 1
        return t

    def accept(self, value):
        if self.peek()[1] == value and self.peek()[0] in ("op", "ident"):
            return self.next()
        return None

    def expect(self, value):
        t = self.next()
        if t[1] != value:
            raise PromQLError(f"expected {value!r} at offset {t[2]}, found {t[1] or 'end'!r}")
        return t

    def parse(self):
        node = self.expression(0)
        if self.peek()[0] != "eof":
            t = self.peek()
            raise PromQLError(f"unexpected {t[1]!r} at offset {t[2]}")
        return node

    def binary_op(self):
        kind, value, _ = self.peek()
        if kind == "op" and value in BINARY_PRECEDENCE:
            return value
        if kind == "ident" and value.lower() in ("and", "or", "unless", "atan2"):
            return value.lower()
        return None

    def expression(self, min_prec):
        lhs = self.unary()
        while True:
            op = self.binary_op()
            if op is None or BINARY_PRECEDENCE[op] < min_prec:
                return lhs
            self.next()
            mods = {"bool": False, "match": None, "labels": [], "group": None, "include": []}
            if self.accept("bool"):
                mods["bool"] = True
            for kw in ("on", "ignoring"):
                if self.accept(kw):
                    mods["match"] = kw
                    mods["labels"] = self.label_list()
            for kw in ("group_left", "group_right"):
                if self.accept(kw):
                    mods["group"] = kw
                    if self.peek()[1] == "(":
                        mods["include"] = self.label_list()
            # ^ is right-associative, every other operator left-associative.
            next_min = BINARY_PRECEDENCE[op] + (0 if op == "^" else 1)
            rhs = self.expression(next_min)
            lhs = ("bin", op, lhs, rhs, mods)

    def unary(self):
        if self.peek()[0] == "op" and self.peek()[1] in ("-", "+"):
            op = self.next()[1]
            return ("unary", op, self.expression(BINARY_PRECEDENCE["^"]))
        return self.postfix(self.primary())

    def postfix(self, node):
        while True:
            t = self.peek()
            if t[1] == "[" and t[0] == "op":
                self.next()
                rng = self.duration()
                if self.accept(":"):
                    step = self.duration() if self.peek()[1] != "]" else None
                    self.expect("]")
                    node = ("subquery", node, rng, step)
                else:
                    self.expect("]")
                    if node[0] != "sel" or node[3] is not None:
                        raise PromQLError(
                            f"range [{rng}] at offset {t[2]} needs a plain selector (or use a subquery [{rng}:])"
                        )
                    node = ("sel", node[1], node[2], rng)
            elif t[0] == "ident" and t[1] == "offset":
                self.next()
                neg = bool(self.accept("-"))
                d = self.duration()
                node = ("offset", node, ("-" if neg else "") + d)
            elif t[1] == "@" and t[0] == "op":
                self.next()
                v = self.next()
                if v[0] == "ident" and v[1] in ("start", "end"):
                    self.expect("(")
                    self.expect(")")
                elif v[0] != "num":
                    raise PromQLError(f"bad @ modifier at offset {v[2]}")
                node = ("at", node)
            else:
                return node

    def duration(self):
        t = self.next()
        if t[0] != "dur":
            raise PromQLError(f"expected a duration at offset {t[2]}, found {t[1] or 'end'!r}")
        return t[1]

    def label_list(self):
        self.expect("(")
        labels = []
        while self.peek()[1] != ")":
            t = self.next()
            if t[0] not in ("ident", "str"):
                raise PromQLError(f"expected a label name at offset {t[2]}, found {t[1]!r}")
            labels.append(t[1].strip("\"'`") if t[0] == "str" else t[1])
            if not self.accept(","):
                break
        self.expect(")")
        return labels

    def primary(self):
        kind, value, pos = self.next()
        if kind == "num":
            return ("num", value)
        if kind == "str":
            return ("str", unquote(value))
        if kind == "op" and value == "(":
            inner = self.expression(0)
            self.expect(")")
            return ("paren", inner)
        if kind == "op" and value == "{":
            self.i -= 1
            matchers = self.matchers()
            names = [m for m in matchers if m[0] == "__name__" and m[1] == "="]
            if not names:
                raise PromQLError(f"selector at offset {pos} has no metric name")
            return ("sel", names[0][2], [m for m in matchers if m[0] != "__name__"], None)
        if kind == "ident":
            low = value.lower()
            if low in ("inf", "nan"):
                return ("num", value)
            if low in AGGREGATORS and self.peek()[1] in ("(", "by", "without"):
                return self.aggregation(low)
            if self.peek()[1] == "(" and self.peek()[0] == "op":
                if value not in FUNCS:
                    raise PromQLError(f"unknown function {value}() at offset {pos}")
                self.next()
                args = []
                while self.peek()[1] != ")":
                    args.append(self.expression(0))
                    if not self.accept(","):
                        break
                self.expect(")")
                return ("call", value, args, pos)
            matchers = self.matchers() if self.peek()[1] == "{" else []
            return ("sel", value, matchers, None, pos)
        raise PromQLError(f"unexpected {value or 'end'!r} at offset {pos}")

    def matchers(self):
        self.expect("{")
        out = []
        while self.peek()[1] != "}":
            name = self.next()
            if name[0] not in ("ident", "str"):
                raise PromQLError(f"expected a label name at offset {name[2]}, found {name[1]!r}")
            op = self.next()
            if op[1] not in ("=", "!=", "=~", "!~"):
                raise PromQLError(f"expected a matcher operator at offset {op[2]}, found {op[1]!r}")
            val = self.next()
            if val[0] != "str":
                raise PromQLError(f"expected a quoted value at offset {val[2]}, found {val[1]!r}")
            label = unquote(name[1]) if name[0] == "str" else name[1]
            out.append((label, op[1], unquote(val[1])))
            if not self.accept(","):
                break
        self.expect("}")
        return out

    def aggregation(self, op):
        grouping = None
        if self.peek()[1] in ("by", "without"):
            grouping = (self.next()[1], self.label_list())
        self.expect("(")
        args = []
        while self.peek()[1] != ")":
            args.append(self.expression(0))
            if not self.accept(","):
                break
        self.expect(")")
        if self.peek()[1] in ("by", "without"):
            if grouping:
                raise PromQLError("grouping given twice")
            grouping = (self.next()[1], self.label_list())
        return ("agg", op, grouping, args)


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    body = s[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


class Context:
    """Where an expression lives and what its selectors must look like."""

    def __init__(self, where, series, job_rule=None):
        self.where = where
        self.series = series
        # (node_job_values, control_job_values) or None: required job matcher values.
        self.job_rule = job_rule
        self.metrics_used = set()
        # alerts: every counter goes through rate()/increase() (a raw counter value means nothing)
        self.counters_need_rate = False

    def err(self, msg):
        problem(self.where, msg)


def fmt(labels):
    return "{" + ", ".join(sorted(labels)) + "}"


def infer(node, ctx):
    """Return (type, label names) of an expression, reporting problems on the way.

    type is 'scalar', 'string', 'vector' or 'matrix'; labels is a set, or None when unknown (an
    unknown metric), in which case no further label checks are made on top of it."""
    kind = node[0]
    if kind == "num":
        return "scalar", set()
    if kind == "str":
        return "string", set()
    if kind == "paren":
        return infer(node[1], ctx)
    if kind in ("offset", "at"):
        return infer(node[1], ctx)
    if kind == "unary":
        return infer(node[2], ctx)
    if kind == "sel":
        return infer_selector(node, ctx)
    if kind == "subquery":
        t, labels = infer(node[1], ctx)
        if t != "vector":
            ctx.err(f"subquery over a {t}")
        return "matrix", labels
    if kind == "call":
        return infer_call(node, ctx)
    if kind == "agg":
        return infer_agg(node, ctx)
    if kind == "bin":
        return infer_bin(node, ctx)
    raise AssertionError(kind)


def infer_selector(node, ctx):
    name, matchers, rng = node[1], node[2], node[3]
    ctx.metrics_used.add(name)
    known = ctx.series.get(name)
    if known is None:
        known = BUILTIN_METRICS.get(name)
    if known is None:
        hint = ""
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base + "_bucket" in ctx.series and base == name:
            hint = f" ({name} is a histogram: use {name}_bucket, _sum or _count)"
        else:
            close = [s for s in ctx.series if s.startswith(name[: max(8, len(name) - 8)])]
            if close:
                hint = f" (declared: {', '.join(sorted(close)[:4])})"
        ctx.err(f"metric {name} is not declared in src/metrics.rs{hint}")
        labels = None
    else:
        labels = set(known) | TARGET_LABELS
        for label, op, value in matchers:
            if label not in labels:
                ctx.err(f"{name} has no label {label!r} (it has {fmt(labels)})")
            elif label not in FREE_FORM_LABELS and not value.startswith("__var_") and SOURCE_LITERALS:
                # result="hit", result=~"hit|stale": each plain alternative must be a value
                # verge can write (a string literal somewhere in src/).
                words = value.split("|") if op in ("=~", "!~") else [value]
                for w in words:
                    if re.fullmatch(r"[a-z0-9_]+", w) and w not in SOURCE_LITERALS:
                        ctx.err(f"{name}{{{label}{op}\"{value}\"}}: {w!r} is not a value verge writes (no \"{w}\" in src/)")
    if ctx.job_rule and (name.startswith("verge_") or name in BUILTIN_METRICS):
        node_jobs, control_jobs = ctx.job_rule
        jobs = [v for (lbl, op, v) in matchers if lbl == "job" and op in ("=", "=~")]
        want = control_jobs if name in CONTROL_SERIES else node_jobs
        if name in BUILTIN_METRICS or name in SHARED_SERIES:
            want = node_jobs | control_jobs
        if not jobs:
            ctx.err(
                f"{name} has no job matcher: scope it with job=\"{sorted(want)[0]}\" "
                f"(nodes and the control plane are different targets with different series)"
            )
        elif not any(j in want for j in jobs):
            ctx.err(f"{name}{{job=\"{jobs[0]}\"}}: expected job to be one of {sorted(want)}")
    return ("matrix" if rng else "vector"), labels


def infer_call(node, ctx):
    fname, args = node[1], node[2]
    types = [None] * len(args)
    labelsets = [None] * len(args)
    for i, a in enumerate(args):
        types[i], labelsets[i] = infer(a, ctx)
    matrices = [i for i, t in enumerate(types) if t == "matrix"]
    if fname in RANGE_FUNCS:
        if not matrices:
            ctx.err(f"{fname}() needs a range vector such as x[5m]")
            return "vector", None
        if fname in COUNTER_FUNCS:
            for a in args:
                inner = a[1] if a[0] == "paren" else a
                if inner[0] == "sel" and SERIES_KIND.get(inner[1]) == "gauge":
                    ctx.err(f"{fname}({inner[1]}[...]): {inner[1]} is a gauge; {fname}() only applies to counters")
        return "vector", labelsets[matrices[0]]
    elif matrices:
        ctx.err(f"{fname}() does not take a range vector")
    if fname in SCALAR_FUNCS:
        return "scalar", set()
    if fname == "vector":
        return "vector", set()
    if fname == "histogram_quantile":
        if len(args) != 2:
            ctx.err("histogram_quantile() takes 2 arguments")
            return "vector", None
        labels = labelsets[1]
        if labels is not None and "le" not in labels:
            ctx.err(f"histogram_quantile() over a vector without 'le' (labels {fmt(labels)}); keep le in by (...)")
        return "vector", (labels - {"le"}) if labels is not None else None
    if fname == "label_replace":
        if len(args) != 5 or any(a[0] != "str" for a in args[1:]):
            ctx.err("label_replace(v, dst, replacement, src, regex) takes a vector and 4 strings")
            return "vector", labelsets[0] if args else None
        dst, src, regex = args[1][1], args[3][1], args[4][1]
        base = labelsets[0]
        if base is not None and src and src not in base:
            ctx.err(f"label_replace() source label {src!r} is not on its input {fmt(base)}")
        try:
            re.compile(regex)
        except re.error as e:
            ctx.err(f"label_replace() regex {regex!r}: {e}")
        return "vector", (base | {dst}) if base is not None else None
    if fname == "label_join":
        base = labelsets[0] if args else None
        if len(args) < 3 or any(a[0] != "str" for a in args[1:]):
            ctx.err("label_join(v, dst, separator, src...) takes a vector and strings")
            return "vector", base
        for a in args[3:]:
            if base is not None and a[1] not in base:
                ctx.err(f"label_join() source label {a[1]!r} is not on its input {fmt(base)}")
        return "vector", (base | {args[1][1]}) if base is not None else None
    if fname in ("absent", "absent_over_time"):
        a = args[0] if args else None
        if a and a[0] == "sel":
            return "vector", {lbl for (lbl, op, _) in a[2] if op == "="}
        return "vector", set()
    # Everything else keeps the labels of its (first) vector argument.
    for t, labels in zip(types, labelsets):
        if t == "vector":
            return "vector", labels
    return "vector", set()


def infer_agg(node, ctx):
    op, grouping, args = node[1], node[2], node[3]
    if op in ("topk", "bottomk", "quantile", "count_values", "limitk", "limit_ratio"):
        if len(args) != 2:
            ctx.err(f"{op}() takes a parameter and a vector")
            return "vector", None
        param_t, _ = infer(args[0], ctx)
        t, labels = infer(args[1], ctx)
    else:
        if len(args) != 1:
            ctx.err(f"{op}() takes one vector")
            return "vector", None
        t, labels = infer(args[0], ctx)
    if t != "vector":
        ctx.err(f"{op}() over a {t} (a range vector needs rate()/increase()/..._over_time())")
    if grouping and labels is not None:
        for lbl in grouping[1]:
            if lbl not in labels:
                ctx.err(f"{op} {grouping[0]} ({lbl}): {lbl!r} is not on the aggregated expression {fmt(labels)}")
    if labels is None:
        return "vector", None
    if op in ("topk", "bottomk", "limitk", "limit_ratio"):
        return "vector", labels
    if grouping is None:
        out = set()
    elif grouping[0] == "by":
        out = set(grouping[1])
    else:
        out = labels - set(grouping[1])
    if op == "count_values" and args[0][0] == "str":
        out |= {args[0][1]}
    return "vector", out


def infer_bin(node, ctx):
    op, lhs, rhs, mods = node[1], node[2], node[3], node[4]
    lt, ll = infer(lhs, ctx)
    rt, rl = infer(rhs, ctx)
    for t in (lt, rt):
        if t in ("matrix", "string"):
            ctx.err(f"operator {op} applied to a {t}")
            return "vector", None
    if op in COMPARISONS and lt == "scalar" and rt == "scalar" and not mods["bool"]:
        ctx.err(f"comparison {op} between scalars needs bool")
    if lt == "scalar" and rt == "scalar":
        return "scalar", set()
    if lt == "scalar":
        return "vector", rl
    if rt == "scalar":
        return "vector", ll
    if ll is None or rl is None:
        return "vector", None
    match, on_labels = mods["match"], set(mods["labels"])
    if op in SET_OPS:
        if match == "on":
            for side, labels in (("left", ll), ("right", rl)):
                missing = on_labels - labels
                if missing:
                    ctx.err(f"{op} on ({', '.join(sorted(missing))}): not on the {side} side {fmt(labels)}")
        elif match is None and op != "or" and ll != rl:
            ctx.err(
                f"{op} between {fmt(ll)} and {fmt(rl)}: different label sets never match; add on (...)"
            )
        return "vector", (ll | rl) if op == "or" else ll
    # Arithmetic and comparisons between two vectors.
    if match == "on":
        for side, labels in (("left", ll), ("right", rl)):
            missing = on_labels - labels
            if missing:
                ctx.err(f"{op} on ({', '.join(sorted(missing))}): not on the {side} side {fmt(labels)}")
    elif match == "ignoring":
        if ll - on_labels != rl - on_labels and mods["group"] is None:
            ctx.err(f"{op} ignoring ({', '.join(sorted(on_labels))}): sides still differ: {fmt(ll)} vs {fmt(rl)}")
    elif mods["group"] is None and ll != rl:
        ctx.err(
            f"{op} between {fmt(ll)} and {fmt(rl)}: without on()/ignoring() both sides need the "
            f"same labels, or nothing matches"
        )
    group, include = mods["group"], set(mods["include"])
    if group == "group_left":
        missing = include - rl
        if missing:
            ctx.err(f"group_left ({', '.join(sorted(missing))}): not on the right side {fmt(rl)}")
        return "vector", ll | include
    if group == "group_right":
        missing = include - ll
        if missing:
            ctx.err(f"group_right ({', '.join(sorted(missing))}): not on the left side {fmt(ll)}")
        return "vector", rl | include
    if match == "on":
        return "vector", on_labels
    if match == "ignoring":
        return "vector", ll - on_labels
    return "vector", ll


def check_promql(expr, ctx):
    """Parse and check one expression; returns its (type, labels) or None when it did not parse."""
    bad = check_balance(expr)
    if bad:
        ctx.err(f"{bad} in: {expr}")
        return None
    try:
        ast = Parser(expr).parse()
    except PromQLError as e:
        ctx.err(f"does not parse: {e}: {expr}")
        return None
    if ctx.counters_need_rate:
        for name in raw_counters(ast):
            ctx.err(f"{name} is a counter: an alert takes rate() or increase() of it, not its raw value")
    return infer(ast, ctx)


def raw_counters(node):
    """Counter series used outside rate(), irate(), increase() or resets()."""
    if isinstance(node, tuple) and node and node[0] == "sel":
        return [node[1]] if SERIES_KIND.get(node[1]) == "counter" else []
    if isinstance(node, tuple) and node and node[0] == "call" and node[1] in COUNTER_FUNCS:
        return []
    found = []
    for part in node if isinstance(node, (tuple, list)) else []:
        found += raw_counters(part)
    return found


# ---------------------------------------------------------------------------------------------
# Grafana dashboards

GRAFANA_BUILTINS = {
    "__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600",
    "__range_ms": "3600000", "__interval_ms": "60000", "__dashboard": "x", "__user": "x",
    "__org": "x", "__name": "x", "__from": "0", "__to": "0", "__all": "x",
}
VAR_REF = re.compile(r"\$\{([a-zA-Z_][a-zA-Z0-9_]*)(?::[^}]*)?\}|\$([a-zA-Z_][a-zA-Z0-9_]*)|\[\[([a-zA-Z_][a-zA-Z0-9_]*)\]\]")
PANEL_TYPES = {
    "row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "heatmap",
    "text", "piechart", "status-history", "barchart",
}


def variable_marker(name):
    return f"__var_{name}__"


def substitute(expr, variables, where):
    """Replace Grafana variables with values PromQL accepts: builtins with a duration, numeric
    textbox/constant/custom variables with their value, other variables with a marker string
    (they only appear inside matcher values)."""

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name not in variables:
            problem(where, f"${name} is not a dashboard variable")
            return variable_marker(name)
        value = variables[name]
        if value is not None and re.fullmatch(r"[0-9.eE+-]+", value):
            return value
        return variable_marker(name)

    return VAR_REF.sub(repl, expr)


def check_dashboard(path, series, counts):
    where = rel(path)
    try:
        dash = json.load(open(path, encoding="utf-8"))
    except (OSError, ValueError) as e:
        problem(where, f"not valid JSON: {e}")
        return []
    for key in ("title", "uid", "schemaVersion", "panels", "templating", "time"):
        if key not in dash:
            problem(where, f"missing top-level {key!r}")
    if not isinstance(dash.get("schemaVersion"), int) or dash.get("schemaVersion", 0) < 36:
        problem(where, f"schemaVersion {dash.get('schemaVersion')!r}: expected an integer >= 36")

    variables = {}
    var_list = dash.get("templating", {}).get("list", [])
    for v in var_list:
        name = v.get("name")
        if not name:
            problem(where, "a templating variable has no name")
            continue
        if name in variables:
            problem(where, f"templating variable {name} defined twice")
        value = None
        if v.get("type") in ("textbox", "constant", "custom"):
            value = str(v.get("query", "")).split(",")[0].strip()
        variables[name] = value
    ds = next((v for v in var_list if v.get("name") == "DS_PROMETHEUS"), None)
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problem(where, "needs a templating variable DS_PROMETHEUS of type datasource, query prometheus")
    for needed in ("job", "instance", "route"):
        if needed not in variables:
            problem(where, f"needs a templating variable {needed!r}")
    node_jobs = {variable_marker("job")}
    control_jobs = {variable_marker("control_job")}

    exprs = []
    for v in var_list:
        if v.get("type") != "query":
            continue
        vwhere = f"{where}: variable {v.get('name')}"
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        check_ds(v.get("datasource"), vwhere)
        q = substitute(q, variables, vwhere)
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q, re.S)
        m_res = re.fullmatch(r"\s*query_result\((.*)\)\s*", q, re.S)
        ctx = Context(vwhere, series)
        if m:
            result = check_promql(m.group(1), ctx)
            if result and result[1] is not None and m.group(2) not in result[1]:
                ctx.err(f"label_values(..., {m.group(2)}): no such label on {fmt(result[1])}")
            exprs.append((vwhere, m.group(1)))
        elif m_res:
            check_promql(m_res.group(1), ctx)
            exprs.append((vwhere, m_res.group(1)))
        else:
            ctx.err(f"unsupported variable query {q!r}")
        counts["metrics"] |= ctx.metrics_used

    ids = set()
    boxes = []
    for p in all_panels(dash.get("panels", [])):
        pid = p.get("id")
        pwhere = f"{where}: panel {pid} {p.get('title', '')!r}"
        if not isinstance(pid, int):
            problem(pwhere, "panel id must be an integer")
        elif pid in ids:
            problem(pwhere, "duplicate panel id")
        ids.add(pid)
        if p.get("type") not in PANEL_TYPES:
            problem(pwhere, f"unknown panel type {p.get('type')!r}")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            problem(pwhere, "gridPos needs integer x, y, w, h")
        else:
            if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
                problem(pwhere, f"gridPos x={g['x']} w={g['w']} is outside the 24-column grid")
            for other, og in boxes:
                if (g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"]
                        and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]):
                    problem(pwhere, f"overlaps panel {other}")
            boxes.append((pid, g))
        for text_key in ("title", "description"):
            substitute(p.get(text_key, ""), variables, pwhere)
        if p.get("type") in ("row", "text"):
            continue
        check_ds(p.get("datasource"), pwhere)
        targets = p.get("targets") or []
        if not targets:
            problem(pwhere, "has no queries")
        refids = set()
        for t in targets:
            twhere = f"{pwhere} query {t.get('refId')}"
            if t.get("refId") in refids or not t.get("refId"):
                problem(twhere, "missing or duplicate refId")
            refids.add(t.get("refId"))
            check_ds(t.get("datasource"), twhere)
            raw = t.get("expr", "")
            if not raw.strip():
                problem(twhere, "empty expr")
                continue
            substitute(t.get("legendFormat", ""), variables, twhere)
            expr = substitute(raw, variables, twhere)
            ctx = Context(twhere, series, (node_jobs, control_jobs))
            check_promql(expr, ctx)
            legend = t.get("legendFormat", "")
            counts["metrics"] |= ctx.metrics_used
            counts["queries"] += 1
            exprs.append((twhere, expr))
            for lbl in re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend):
                result = infer_quiet(expr, series)
                if result is not None and lbl not in result:
                    problem(twhere, f"legend uses {{{{{lbl}}}}}, not a label of the result {fmt(result)}")
    counts["panels"] += len(ids)
    return exprs


def infer_quiet(expr, series):
    """Labels of an expression without reporting anything (problems were reported already)."""
    saved = len(problems)
    try:
        result = infer(Parser(expr).parse(), Context("", series))
    except PromQLError:
        result = None
    del problems[saved:]
    return result[1] if result else None


def check_ds(ds, where):
    if not isinstance(ds, dict) or ds.get("uid") != "${DS_PROMETHEUS}":
        problem(where, f"datasource should be {{\"type\": \"prometheus\", \"uid\": \"${{DS_PROMETHEUS}}\"}}, is {ds!r}")


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []) if p.get("type") == "row" else [])


# ---------------------------------------------------------------------------------------------
# Prometheus: scrape config and rules

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def expected_targets():
    """Admin listeners of the demo node configs and the control plane's listen, from conf/
    (conf/tls-example.yaml shows TLS options and is not part of the demo fleet)."""
    nodes, control = set(), set()
    ctl_dir = os.path.join(ROOT, "conf", "control")
    candidates = [os.path.join(ROOT, "conf", "verge.yaml")]
    candidates += [os.path.join(ctl_dir, f) for f in sorted(os.listdir(ctl_dir))] if os.path.isdir(ctl_dir) else []
    for path in candidates:
        if not path.endswith(".yaml") or not os.path.isfile(path):
            continue
        doc = yaml.safe_load(open(path, encoding="utf-8")) or {}
        listen = (doc.get("admin") or {}).get("listen")
        if listen:
            nodes.add(listen)
    ctl = os.path.join(ROOT, "conf", "control", "control.yaml")
    if os.path.isfile(ctl):
        doc = yaml.safe_load(open(ctl, encoding="utf-8")) or {}
        if doc.get("listen"):
            control.add(doc["listen"])
    return nodes, control


def check_prometheus_config():
    """Returns (node job names, control job names, rule files)."""
    where = rel(PROM_CONFIG)
    try:
        cfg = yaml.safe_load(open(PROM_CONFIG, encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        problem(where, f"cannot read: {e}")
        return set(), set(), []
    rule_files = []
    for rf in cfg.get("rule_files") or []:
        path = os.path.normpath(os.path.join(os.path.dirname(PROM_CONFIG), rf))
        if not os.path.isfile(path):
            problem(where, f"rule_files entry {rf} does not exist ({rel(path)})")
        rule_files.append(path)
    if not rule_files:
        problem(where, "no rule_files")
    want_nodes, want_control = expected_targets()
    node_jobs, control_jobs, seen = set(), set(), set()
    jobs = set()
    for sc in cfg.get("scrape_configs") or []:
        job = sc.get("job_name")
        if job in jobs:
            problem(where, f"job_name {job} used twice")
        jobs.add(job)
        path = sc.get("metrics_path", "/metrics")
        if path != "/metrics":
            problem(where, f"job {job}: metrics_path {path}; verge serves /metrics")
        targets = set()
        for st in sc.get("static_configs") or []:
            targets |= set(st.get("targets") or [])
            TARGET_LABELS.update((st.get("labels") or {}).keys())
        seen |= targets
        if targets & want_control:
            control_jobs.add(job)
            if targets - want_control:
                problem(where, f"job {job} mixes the control plane with other targets: {sorted(targets - want_control)}")
        elif targets & want_nodes:
            node_jobs.add(job)
    for t in sorted((want_nodes | want_control) - seen):
        problem(where, f"no scrape target for {t} (a listener in conf/)")
    if not node_jobs:
        problem(where, "no job scrapes verge nodes")
    if not control_jobs:
        problem(where, "no job scrapes the control plane")
    return node_jobs, control_jobs, rule_files


def heading_anchors(path):
    """The anchors GitHub gives the headings of a Markdown file (outside code blocks)."""
    anchors, seen, fenced = set(), {}, False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def check_runbook_url(where, url, sections):
    """runbook_url: `docs/FILE.md#anchor`, a section that exists, one per alert."""
    if not url:
        return
    m = re.fullmatch(r"docs/([\w.-]+\.md)#([\w-]+)", url)
    if not m:
        problem(where, f"runbook_url {url!r}: expected docs/FILE.md#section")
        return
    path = os.path.join(ROOT, "docs", m.group(1))
    if not os.path.isfile(path):
        problem(where, f"runbook_url {url!r}: no file {rel(path)}")
        return
    if m.group(2) not in heading_anchors(path):
        problem(where, f"runbook_url {url!r}: {rel(path)} has no section #{m.group(2)}")
    if url in sections:
        problem(where, f"runbook_url {url!r} is also the runbook of {sections[url]}")
    sections[url] = where


def check_rules(path, series, node_jobs, control_jobs, counts):
    where = rel(path)
    try:
        doc = yaml.safe_load(open(path, encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        problem(where, f"cannot read: {e}")
        return
    names, groups = set(), set()
    runbook_sections = {}
    for g in (doc or {}).get("groups") or []:
        gname = g.get("name")
        if not gname or gname in groups:
            problem(where, f"group name {gname!r} missing or duplicate")
        groups.add(gname)
        for r in g.get("rules") or []:
            name = r.get("alert") or r.get("record")
            rwhere = f"{where}: {name or '<unnamed rule>'}"
            expr = str(r.get("expr", ""))
            if not expr.strip():
                problem(rwhere, "no expr")
                continue
            ctx = Context(rwhere, series, (node_jobs, control_jobs))
            ctx.counters_need_rate = "alert" in r
            result = check_promql(expr, ctx)
            counts["metrics"] |= ctx.metrics_used
            if "record" in r:
                if result and result[1] is not None:
                    series[r["record"]] = result[1]
                continue
            if not name or name in names:
                problem(rwhere, "alert name missing or duplicate")
            names.add(name)
            counts["alerts"] += 1
            if not DURATION.match(str(r.get("for", ""))):
                problem(rwhere, f"needs for: DURATION (is {r.get('for')!r})")
            sev = (r.get("labels") or {}).get("severity")
            if sev not in SEVERITIES:
                problem(rwhere, f"labels.severity {sev!r}: expected one of {sorted(SEVERITIES)}")
            ann = r.get("annotations") or {}
            for key in ("summary", "description", "runbook", "runbook_url"):
                if not str(ann.get(key, "")).strip():
                    problem(rwhere, f"needs annotations.{key}")
            check_runbook_url(rwhere, str(ann.get("runbook_url", "")), runbook_sections)
            labels = result[1] if result else None
            for key, text in ann.items():
                for lbl in re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", str(text)):
                    if labels is not None and lbl not in labels:
                        problem(rwhere, f"annotations.{key} uses $labels.{lbl}, not a label of the alert {fmt(labels)}")


# ---------------------------------------------------------------------------------------------
# promtool


def run_promtool(promtool, rule_files, dashboard_exprs):
    def run(args, what):
        out = subprocess.run([promtool] + args, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            text = (out.stdout + out.stderr).strip()
            problem(f"promtool {what}", text)
        return out.returncode == 0

    ok = run(["check", "config", rel(PROM_CONFIG)], "check config")
    for rf in rule_files:
        ok &= run(["check", "rules", rel(rf)], f"check rules {rel(rf)}")
    tests = sorted(f for f in os.listdir(PROM_DIR) if f.endswith(".test.yml"))
    for t in tests:
        ok &= run(["test", "rules", rel(os.path.join(PROM_DIR, t))], f"test rules {t}")
    if dashboard_exprs:
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(dashboard_exprs)
        ]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            yaml.safe_dump(rules, f)
            tmp = f.name
        try:
            out = subprocess.run([promtool, "check", "rules", tmp], capture_output=True, text=True)
            if out.returncode != 0:
                text = out.stdout + out.stderr
                mapped = False
                for m in re.finditer(r'"dashboard:query_(\d+)": (.*)', text):
                    w, e = dashboard_exprs[int(m.group(1))]
                    problem(w, f"promtool: {m.group(2)}: {e}")
                    mapped = True
                if not mapped:
                    problem("promtool check rules (dashboard queries)", text.strip())
                ok = False
        finally:
            os.unlink(tmp)
    return ok, len(tests)


SELF_TEST_MUTATIONS = [
    # (file, text replaced wherever it occurs, replacement, message the check must print)
    ("conf/grafana/verge-dashboard.json", "verge_cache_lookups_total{", "verge_cache_lookup_total{",
     "metric verge_cache_lookup_total is not declared in src/metrics.rs"),
    ("conf/prometheus/verge-alerts.yml", "sum by (job, instance, pool) (verge_backend_healthy",
     "sum by (job, instance, route) (verge_backend_healthy", "'route' is not on the aggregated expression"),
    ("src/metrics.rs", '"verge_snapshot_age_seconds",', '"verge_snapshot_staleness_seconds",',
     "metric verge_snapshot_age_seconds is not declared"),
    ("conf/prometheus/verge-alerts.yml", "          severity: critical\n", "",
     "labels.severity None"),
    ("docs/runbooks.md", "### VergeSnapshotStale\n", "### Snapshot stale\n",
     "docs/runbooks.md has no section #vergesnapshotstale"),
    ("conf/prometheus/verge-alerts.yml", "rate(verge_access_log_dropped_total{job=\"verge\"}[5m]) > 0",
     "verge_access_log_dropped_total{job=\"verge\"} > 0",
     "verge_access_log_dropped_total is a counter: an alert takes rate()"),
    ("conf/prometheus/verge-alerts.yml", "expr: verge_snapshot_age_seconds{job=\"verge\"} > 120",
     "expr: rate(verge_snapshot_age_seconds{job=\"verge\"}[5m]) > 120",
     "verge_snapshot_age_seconds is a gauge; rate() only applies to counters"),
]


def self_test():
    """Break a copy of the tree in known ways and check that each break is reported."""
    import shutil

    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for d in ("scripts", "src", "conf", "docs"):
            shutil.copytree(os.path.join(ROOT, d), os.path.join(tmp, d))
        script = os.path.join(tmp, "scripts", os.path.basename(__file__))
        env = dict(os.environ, PROMTOOL="")
        for mutation in [None] + SELF_TEST_MUTATIONS:
            restore = None
            if mutation:
                path = os.path.join(tmp, mutation[0])
                restore = open(path, encoding="utf-8").read()
                if mutation[1] not in restore:
                    print(f"self-test: {mutation[0]} no longer contains {mutation[1]!r}")
                    failures += 1
                    continue
                open(path, "w", encoding="utf-8").write(restore.replace(mutation[1], mutation[2]))
            out = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env)
            if mutation is None:
                ok = out.returncode == 0
                what = "unchanged copy passes"
            else:
                ok = out.returncode == 1 and mutation[3] in out.stderr
                what = f"{mutation[0]}: {mutation[1].strip()!r} -> {mutation[2].strip()!r} is caught"
            print(f"self-test: {'ok  ' if ok else 'FAIL'} {what}")
            if not ok:
                failures += 1
                print(out.stdout + out.stderr)
            if restore is not None:
                open(path, "w", encoding="utf-8").write(restore)
    return 1 if failures else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    declared, series = load_metrics()
    SOURCE_LITERALS.update(load_source_literals())
    counts = {"metrics": set(), "queries": 0, "panels": 0, "alerts": 0}
    node_jobs, control_jobs, rule_files = check_prometheus_config()
    dashboards = sorted(
        os.path.join(DASHBOARD_DIR, f) for f in os.listdir(DASHBOARD_DIR) if f.endswith(".json")
    ) if os.path.isdir(DASHBOARD_DIR) else []
    if not dashboards:
        problem(rel(DASHBOARD_DIR), "no dashboard JSON")
    dashboard_exprs = []
    for d in dashboards:
        dashboard_exprs += check_dashboard(d, series, counts)
    for rf in rule_files:
        if os.path.isfile(rf):
            check_rules(rf, series, node_jobs or {"verge"}, control_jobs or {"verge-control"}, counts)

    promtool = os.environ.get("PROMTOOL")
    promtool_note = "promtool: not available, skipped"
    if promtool and not problems:
        version = subprocess.run([promtool, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        ok, ntests = run_promtool(promtool, rule_files, dashboard_exprs)
        promtool_note = f"{version.strip()}: check config, check rules, {ntests} rule test file(s), " \
                        f"{len(dashboard_exprs)} dashboard queries parsed" + ("" if ok else " -- FAILED")
    elif promtool:
        promtool_note = "promtool: not run (fix the problems above first)"

    unused = sorted(
        m.name for m in declared.values()
        if not any(u == m.name or u.startswith(m.name + "_") for u in counts["metrics"])
    )
    if problems:
        print(f"check-dashboards: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        print(promtool_note, file=sys.stderr)
        return 1
    print(
        f"check-dashboards: ok: {len(dashboards)} dashboard(s), {counts['panels']} panels, "
        f"{counts['queries']} queries, {counts['alerts']} alerts, "
        f"{len(counts['metrics'] & set(series))} of {len(series)} series names used"
    )
    if unused:
        print(f"  not on the dashboard or in an alert: {', '.join(unused)}")
    print(f"  {promtool_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
