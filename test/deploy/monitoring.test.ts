// The monitoring kit in deploy/: the Grafana dashboard (deploy/grafana/weft.json)
// and the Prometheus alerts (deploy/prometheus/weft-rules.yaml). promtool checks
// the rules and runs their unit tests (weft-rules.test.yaml); each alert is then
// broken on purpose to prove its tests would notice. Every metric, label and
// label value the PromQL uses must be one the daemons really export, read from
// their registries in-process, so a renamed metric fails here, not on a blank panel.
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Registry } from "prom-client";
import { parse as parseYaml } from "yaml";
import { afterAll, describe, expect, it } from "vitest";
import { createServerMetrics } from "../../lease-server/src/metrics.js";
import { createAgentMetrics } from "../../node-agent/src/metrics.js";
import { requireTools } from "../tools.js";

const ROOT = resolve(import.meta.dirname, "../..");
const RULES = join(ROOT, "deploy/prometheus/weft-rules.yaml");
const RULE_TESTS = join(ROOT, "deploy/prometheus/weft-rules.test.yaml");
const DASHBOARD = join(ROOT, "deploy/grafana/weft.json");
const PROMETHEUS_EXAMPLE = join(ROOT, "deploy/prometheus/prometheus.example.yml");

const hasPromtool = requireTools({ promtool: "prometheus" }, "the Prometheus rule checks");

const tmp = mkdtempSync(join(tmpdir(), "weft-monitoring-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Rule { alert?: string; record?: string; expr: string; for?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
interface RulesFile { groups: { name: string; rules: Rule[] }[] }
interface AlertTest { eval_time: string; alertname: string; exp_alerts?: unknown[] }
interface RuleTestsFile { rule_files: string[]; tests: { name?: string; alert_rule_test?: AlertTest[] }[] }

const rulesText = readFileSync(RULES, "utf8");
const rules = (parseYaml(rulesText) as RulesFile).groups.flatMap((g) => g.rules);
const alerts = rules.filter((r): r is Rule & { alert: string } => !!r.alert);
const ruleTests = parseYaml(readFileSync(RULE_TESTS, "utf8")) as RuleTestsFile;

// ---------------------------------------------------------------------------
// PromQL: the metric names, and the label matchers, an expression uses.

const KEYWORDS = new Set(["and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "inf", "nan", "atan2"]);
const STRING = /"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g;

/** Metric names in a PromQL expression: identifiers that are not functions, keywords or label names. */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(STRING, '""')
    .replace(/\{[^}]*\}/g, " ") // label matchers
    .replace(/\[[^\]]*\]/g, " ") // ranges and subqueries' durations
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ") // label lists
    .replace(/\boffset\s+-?[\w$]+/g, " ")
    .replace(/\$\{?\w+\}?/g, " "); // Grafana variables outside strings
  const names: string[] = [];
  const token = /([A-Za-z_:][A-Za-z0-9_:]*)|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|\S/g;
  for (let m = token.exec(bare); m; m = token.exec(bare)) {
    const id = m[1];
    if (!id || KEYWORDS.has(id.toLowerCase())) continue;
    if (/^\s*\(/.test(bare.slice(token.lastIndex))) continue; // a function or aggregation
    names.push(id);
  }
  return names;
}

/** Every `metric{matchers}` selector: the metric and its matchers (label, operator, value). */
function selectors(expr: string): { metric: string; matchers: { label: string; op: string; value: string }[] }[] {
  const out = [];
  for (const s of expr.matchAll(/([A-Za-z_:][A-Za-z0-9_:]*)\s*\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\}/g)) {
    const matchers = [...s[2].matchAll(/([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g)].map((m) => ({ label: m[1], op: m[2], value: m[3] }));
    out.push({ metric: s[1], matchers });
  }
  return out;
}

/** A Grafana query variable's PromQL: `label_values(expr, label)` and `query_result(expr)`. */
function variableExpr(query: string): string | undefined {
  const lv = /^\s*label_values\(\s*(.+)\s*,\s*[A-Za-z_]\w*\s*\)\s*$/.exec(query);
  if (lv) return lv[1];
  const qr = /^\s*query_result\(\s*(.+)\s*\)\s*$/.exec(query);
  return qr?.[1];
}

// ---------------------------------------------------------------------------
// What the daemons export.

interface Exported { labels: Set<string> }

/** The series names a scrape of these registries can yield, each with the labels its metric declares. */
async function exportedBy(registries: Registry[]): Promise<Map<string, Exported>> {
  const out = new Map<string, Exported>();
  for (const registry of registries) {
    for (const m of await registry.getMetricsAsJSON()) {
      const declared = (registry.getSingleMetric(m.name) as unknown as { labelNames?: readonly string[] } | undefined)?.labelNames;
      if (!declared) throw new Error(`prom-client no longer keeps labelNames on ${m.name}: read the labels another way`);
      const labels = new Set(declared);
      const add = (name: string, extra: string[] = []) => out.set(name, { labels: new Set([...labels, ...extra, ...(out.get(name)?.labels ?? [])]) });
      // prom-client's typings say an enum; at run time the type is the exposition's word.
      const type = String(m.type);
      if (type === "histogram") {
        add(`${m.name}_bucket`, ["le"]);
        add(`${m.name}_sum`);
        add(`${m.name}_count`);
      } else if (type === "summary") {
        add(m.name, ["quantile"]);
        add(`${m.name}_sum`);
        add(`${m.name}_count`);
      } else {
        add(m.name);
      }
    }
  }
  return out;
}

// `up` is Prometheus' own per target; job and instance are every target's labels.
const TARGET_LABELS = ["job", "instance"];
const exported = await exportedBy([createServerMetrics().registry, createAgentMetrics().registry]);
exported.set("up", { labels: new Set() });

/** Quoted strings in the daemons' sources: where every label value a query matches must come from. */
const sourceStrings = (() => {
  const strings = new Set<string>();
  for (const dir of ["lease-server/src", "node-agent/src", "lib/src"]) {
    for (const f of readdirSync(join(ROOT, dir), { recursive: true, encoding: "utf8" })) {
      if (!f.endsWith(".ts")) continue;
      for (const m of readFileSync(join(ROOT, dir, f), "utf8").matchAll(/"([A-Za-z0-9_]+)"/g)) strings.add(m[1]);
    }
  }
  return strings;
})();

/** What is wrong with one expression: unknown metrics, labels they do not have, values nothing sets. */
function problems(where: string, expr: string): string[] {
  const found: string[] = [];
  for (const name of metricNames(expr)) {
    if (!exported.has(name)) found.push(`${where}: metric ${name} is not exported by the lease server or the agent`);
  }
  for (const { metric, matchers } of selectors(expr)) {
    const m = exported.get(metric);
    if (!m) continue;
    for (const { label, value } of matchers) {
      if (TARGET_LABELS.includes(label)) continue;
      if (!m.labels.has(label)) {
        found.push(`${where}: ${metric} has no label ${label} (it has: ${[...m.labels].join(", ") || "none"})`);
        continue;
      }
      if (label === "le" || label === "quantile") continue;
      // A literal or an alternation of literals (a|b); Grafana variables are the user's choice.
      for (const v of value.split("|")) {
        if (v.includes("$")) continue;
        if (!sourceStrings.has(v)) found.push(`${where}: ${metric}{${label}="${v}"}: no daemon source sets the value "${v}"`);
      }
    }
  }
  return found;
}

// ---------------------------------------------------------------------------
// The dashboard.

interface GridPos { x: number; y: number; w: number; h: number }
interface Panel {
  id: number; type: string; title: string; description?: string; gridPos: GridPos;
  datasource?: { type?: string; uid?: string }; targets?: { expr?: string; refId?: string; datasource?: { uid?: string } }[];
  fieldConfig?: { defaults?: { unit?: string } }; panels?: Panel[];
}
interface TemplateVar { name: string; type: string; query: string | { query: string }; datasource?: { uid?: string } }
interface Dashboard { uid: string; title: string; schemaVersion: number; panels: Panel[]; templating: { list: TemplateVar[] } }

const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as Dashboard;
const allPanels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const dataPanels = allPanels.filter((p) => p.type !== "row");
const varQuery = (v: TemplateVar) => (typeof v.query === "string" ? v.query : v.query.query);
const dashboardExprs: [string, string][] = [
  ...dataPanels.flatMap((p) => (p.targets ?? []).map((t): [string, string] => [`panel "${p.title}" ${t.refId}`, t.expr ?? ""])),
  ...dashboard.templating.list.filter((v) => v.type === "query").map((v): [string, string] => [`variable $${v.name}`, variableExpr(varQuery(v)) ?? ""]),
];

describe("PromQL parsing used by these checks", () => {
  it("finds the metric names and only them", () => {
    expect(metricNames('sum by (job, le) (rate(foo_bucket{a="b", c=~"$x|y"}[5m])) / on (job) group_left bar > 0.9 and baz offset 5m unless absent(qux) or vector(1) * 1e3'))
      .toEqual(["foo_bucket", "bar", "baz", "qux"]);
    expect(metricNames('histogram_quantile(0.99, sum(rate(x_bucket{instance=~"$instance"}[$__rate_interval])) by (le)) - time()')).toEqual(["x_bucket"]);
    expect(metricNames("count(up == 1) - scalar(max(weft_lease_server_revision))")).toEqual(["up", "weft_lease_server_revision"]);
  });

  it("names an unknown metric, an unknown label and an unset label value", () => {
    expect(problems("t", 'rate(weft_lease_server_renew_totl[5m])')).toEqual(["t: metric weft_lease_server_renew_totl is not exported by the lease server or the agent"]);
    expect(problems("t", 'weft_lease_server_renew_total{result="ok"}')).toEqual(["t: weft_lease_server_renew_total has no label result (it has: outcome)"]);
    expect(problems("t", 'weft_lease_server_renew_total{outcome=~"ok|exhausted|timeout"}')).toEqual([
      't: weft_lease_server_renew_total{outcome="timeout"}: no daemon source sets the value "timeout"',
    ]);
    expect(problems("t", 'weft_agent_peers{instance=~"${node}", kind="x"}')).toEqual(["t: weft_agent_peers has no label kind (it has: none)"]);
    expect(problems("t", 'histogram_quantile(0.5, sum by (le) (rate(weft_agent_reconcile_duration_seconds_bucket{job=~"$agent_job", le="1"}[5m])))')).toEqual([]);
  });

  it("finds the expression of Grafana query variables", () => {
    expect(variableExpr('label_values(weft_agent_peers{job=~"$agent_job"}, instance)')).toBe('weft_agent_peers{job=~"$agent_job"}');
    expect(variableExpr("query_result(max(up))")).toBe("max(up)");
  });
});

describe("every metric, label and label value used is exported", () => {
  it("in the alert rules", () => {
    expect(rules.length).toBeGreaterThan(0);
    expect(rules.flatMap((r) => problems(`rule ${r.alert ?? r.record}`, r.expr))).toEqual([]);
  });

  it("in the dashboard", () => {
    expect(dashboardExprs.length).toBeGreaterThan(20);
    for (const [where, expr] of dashboardExprs) expect(expr, `${where} has no PromQL`).not.toBe("");
    expect(dashboardExprs.flatMap(([where, expr]) => problems(where, expr))).toEqual([]);
  });

  it("covers what the issue asks the dashboard to show", () => {
    const used = new Set(dashboardExprs.flatMap(([, e]) => metricNames(e)));
    for (const name of [
      "weft_lease_server_leases", "weft_lease_server_subnets", "weft_lease_server_acquire_total", "weft_lease_server_renew_total",
      "weft_lease_server_watch_streams", "weft_lease_server_watch_streams_dropped_total", "weft_lease_server_convergence_seconds_bucket",
      "weft_lease_server_agents", "weft_agent_peers", "weft_agent_drift_repairs_total", "weft_agent_reconcile_duration_seconds_bucket",
      "weft_agent_ready", "weft_lease_server_limit_rejections_total", "weft_lease_server_process_cpu_seconds_total",
      "weft_agent_process_cpu_seconds_total", "weft_lease_server_process_resident_memory_bytes", "weft_agent_process_resident_memory_bytes",
    ]) expect(used, name).toContain(name);
  });
});

describe("the Grafana dashboard is importable", () => {
  it.runIf(hasPromtool)("has queries Prometheus parses (as recording rules, promtool check rules)", () => {
    // Grafana fills in its variables before Prometheus sees a query: do the same.
    const filled = (expr: string) => expr
      .replace(/\$__rate_interval|\$__interval|\$__range/g, "5m")
      .replace(/\$\{?\w+\}?/g, ".*");
    const file = join(tmp, "dashboard-queries.rules.yaml");
    const records = dashboardExprs.map(([where, expr], i) => ({ record: `weft_dashboard:query_${i}`, expr: filled(expr), labels: { where } }));
    writeFileSync(file, JSON.stringify({ groups: [{ name: "dashboard", rules: records }] }));
    const r = spawnSync("promtool", ["check", "rules", file], { encoding: "utf8" });
    expect(r.stdout + r.stderr).toContain(`SUCCESS: ${records.length} rules found`);
    expect(r.status).toBe(0);
  });

  it("has a title, a uid, a current schema and a Prometheus data source variable", () => {
    expect(dashboard.title).toBe("weft");
    expect(dashboard.uid).toMatch(/^[A-Za-z0-9_-]{1,40}$/);
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    const ds = dashboard.templating.list.find((v) => v.name === "datasource");
    expect(ds).toMatchObject({ type: "datasource", query: "prometheus" });
  });

  it("has unique panel ids", () => {
    const ids = allPanels.map((p) => p.id);
    expect(ids.every((id) => Number.isInteger(id) && id > 0)).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("gives every panel the data source variable, queries with unique refIds, a unit and a description", () => {
    for (const p of dataPanels) {
      const where = `panel ${p.id} "${p.title}"`;
      expect(p.datasource, where).toEqual({ type: "prometheus", uid: "${datasource}" });
      expect(p.targets?.length, where).toBeGreaterThan(0);
      const refIds = p.targets!.map((t) => t.refId);
      expect(new Set(refIds).size, `${where}: refIds`).toBe(refIds.length);
      for (const t of p.targets!) expect(t.datasource?.uid, where).toBe("${datasource}");
      expect(p.fieldConfig?.defaults?.unit, `${where}: unit`).toBeTruthy();
      expect(p.description?.length ?? 0, `${where}: description`).toBeGreaterThan(10);
    }
  });

  it("lays the panels out on the 24-column grid without overlaps", () => {
    const overlap = (a: GridPos, b: GridPos) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    for (const p of allPanels) {
      const { x, y, w, h } = p.gridPos;
      expect([x, y, w, h].every(Number.isInteger), `panel ${p.id}`).toBe(true);
      expect(x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24, `panel ${p.id} "${p.title}" ${JSON.stringify(p.gridPos)}`).toBe(true);
    }
    const clashes = allPanels.flatMap((a, i) => allPanels.slice(i + 1).filter((b) => overlap(a.gridPos, b.gridPos)).map((b) => `${a.title} / ${b.title}`));
    expect(clashes).toEqual([]);
  });

  it("defines every variable its queries use", () => {
    const defined = new Set(dashboard.templating.list.map((v) => v.name));
    const builtins = new Set(["__rate_interval", "__range", "__interval", "__all"]);
    const used = new Set(dashboardExprs.flatMap(([, e]) => [...e.matchAll(/\$\{?(\w+)\}?/g)].map((m) => m[1])));
    expect([...used].filter((v) => !defined.has(v) && !builtins.has(v))).toEqual([]);
    for (const v of dashboard.templating.list.filter((t) => t.type === "query")) expect(v.datasource?.uid, v.name).toBe("${datasource}");
  });
});

// ---------------------------------------------------------------------------
// The alert rules.

describe("the alert rules", () => {
  it("every alert has for:, a severity, a summary, a description and a runbook hint", () => {
    expect(alerts.length).toBeGreaterThanOrEqual(10);
    for (const a of alerts) {
      expect(a.for, a.alert).toMatch(/^\d+[smh]$/);
      expect(["critical", "warning", "info"], a.alert).toContain(a.labels?.severity);
      for (const k of ["summary", "description", "runbook"]) expect(a.annotations?.[k]?.length ?? 0, `${a.alert} ${k}`).toBeGreaterThan(10);
    }
    expect(new Set(alerts.map((a) => a.alert)).size).toBe(alerts.length);
  });

  it.runIf(hasPromtool)("pass promtool check rules", () => {
    const r = spawnSync("promtool", ["check", "rules", RULES], { encoding: "utf8" });
    expect(r.stdout + r.stderr).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(r.status).toBe(0);
  });

  it.runIf(hasPromtool)("load from the example Prometheus configuration (promtool check config)", () => {
    expect((parseYaml(readFileSync(PROMETHEUS_EXAMPLE, "utf8")) as { rule_files: string[] }).rule_files).toEqual(["weft-rules.yaml"]);
    const r = spawnSync("promtool", ["check", "config", PROMETHEUS_EXAMPLE], { encoding: "utf8" });
    expect(r.stdout + r.stderr).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(r.status).toBe(0);
  });

  it.runIf(hasPromtool)("pass their unit tests (promtool test rules)", () => {
    const r = spawnSync("promtool", ["test", "rules", RULE_TESTS], { encoding: "utf8" });
    expect(r.stdout + r.stderr).toContain("SUCCESS");
    expect(r.status).toBe(0);
  });

  it("every alert has unit tests", () => {
    const tested = new Set(ruleTests.tests.flatMap((t) => (t.alert_rule_test ?? []).map((c) => c.alertname)));
    expect(alerts.map((a) => a.alert).filter((a) => !tested.has(a))).toEqual([]);
  });

  // Each alert broken two ways. Never firing must fail its "fires" test; each near miss below
  // (the mistake the expression is written to avoid) must fail its "does not fire" test.
  const NEVER = "vector(0) > 1";
  const NEAR_MISSES: [alert: string, from: string, to: string][] = [
    ["WeftSubnetPoolNearlyExhausted", "max by (job) (weft_lease_server_leases)", "sum by (job) (weft_lease_server_leases)"],
    ["WeftSubnetPoolExhausted", 'outcome="exhausted"', 'outcome!="created"'],
    ["WeftLeaseRenewalsFailing", "> 0.1", "> 0.05"],
    ["WeftWatchStreamsDropping", "> 2", "> 0"],
    ["WeftLeaseServerDown", "up == 0 and on (job, instance) present_over_time(weft_lease_server_subnets[1d])", "up == 0"],
    ["WeftLeaseServersAbsent", "absent(weft_lease_server_subnets)", "absent(weft_lease_server_leases)"],
    ["WeftAgentsLagging", "for: 10m", "for: 1m"],
    ["WeftAgentsUnhealthy", 'state="unhealthy"', 'state=~"unhealthy|lagging"'],
    ["WeftAgentsDisconnected", 'sum by (job) (weft_lease_server_agents{state=~"converged|lagging|unhealthy"})', 'sum by (job) (weft_lease_server_agents{state="converged"})'],
    ["WeftConvergenceSlow", "> 10", "> 0.5"],
    ["WeftConvergenceAbandoned", "> 0", ">= 0"],
    ["WeftAgentNotReady", "for: 5m", "for: 1m"],
    ["WeftAgentServerDisconnected", "weft_agent_server_connected == 0", "weft_agent_server_connected <= 1"],
    ["WeftAgentLeaseRenewalsFailing", 'result=~"error|store_mismatch"', 'result!="ok"'],
    ["WeftAgentLeaseRenewalsFailing", "unless on (job, instance)", "or on (job, instance)"],
    ["WeftAgentDown", "present_over_time(weft_agent_peers[1d])", "present_over_time(up[1d])"],
  ];

  it.runIf(hasPromtool)("each alert's tests fail when the alert is broken", { timeout: 60_000 }, () => {
    expect(new Set(NEAR_MISSES.map(([a]) => a))).toEqual(new Set(alerts.map((a) => a.alert)));
    const mutants = [
      ...alerts.map((a): [string, string] => [a.alert, withRule(a.alert, (block) => block.replace(/expr: (\|\n(?:\s{10,}.*\n)+|.*\n)/, `expr: ${NEVER}\n`))]),
      ...NEAR_MISSES.map(([alert, from, to]): [string, string] => [alert, withRule(alert, (block) => {
        expect(block, `${alert}: "${from}"`).toContain(from);
        return block.replace(from, to);
      })]),
    ];
    // One promtool run over all mutants, each with only its alert's tests: seconds, not minutes.
    const files = mutants.map(([alert, text], i) => {
      const rulesFile = join(tmp, `mutant-${i}.rules.yaml`);
      writeFileSync(rulesFile, text);
      const tests = ruleTests.tests
        .map((t) => ({ ...t, alert_rule_test: (t.alert_rule_test ?? []).filter((c) => c.alertname === alert) }))
        .filter((t) => t.alert_rule_test.length > 0);
      const testFile = join(tmp, `mutant-${i}.test.yaml`);
      writeFileSync(testFile, JSON.stringify({ ...ruleTests, rule_files: [rulesFile], tests }));
      return testFile;
    });
    expect(mutants.map(([, text]) => text).filter((t) => t === rulesText)).toEqual([]);
    // promtool prints each file's name on stdout and its failures on stderr: one fd keeps them in order.
    const log = join(tmp, "mutants.log");
    const fd = openSync(log, "w");
    try {
      spawnSync("promtool", ["test", "rules", ...files], { stdio: ["ignore", fd, fd] });
    } finally {
      closeSync(fd);
    }
    const out = readFileSync(log, "utf8");
    const survivors = files.flatMap((f, i) => {
      const section = out.split("Unit Testing:").find((s) => s.trimStart().startsWith(f)) ?? "(no output)";
      return /FAILED/.test(section) && section.includes(`alertname: ${mutants[i][0]}`) ? [] : [`${mutants[i][0]} mutant ${i}: ${section.trim().slice(0, 300)}`];
    });
    expect(survivors).toEqual([]);
  });
});

/** The rules file with one alert's block (from its `- alert:` line to the next rule) rewritten. */
function withRule(alert: string, edit: (block: string) => string): string {
  const start = rulesText.indexOf(`- alert: ${alert}\n`);
  if (start < 0) throw new Error(`no alert ${alert} in ${RULES}`);
  const next = rulesText.slice(start + 1).search(/\n\s*- (alert|record):|\n\s*- name:/);
  const end = next < 0 ? rulesText.length : start + 1 + next + 1;
  return rulesText.slice(0, start) + edit(rulesText.slice(start, end)) + rulesText.slice(end);
}
