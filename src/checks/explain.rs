//! The EXPLAIN gate's rules: a query's plan in short form, read from
//! `EXPLAIN (FORMAT JSON)`, and the verdict on the plans before and after the
//! change. Pure; the I/O is in [`crate::steps::explain`].
//!
//! Invariants (unit-tested below):
//! - Missing data is never a pass: a query whose EXPLAIN failed after the
//!   change fails the gate, and so does a ratio that cannot be computed (no
//!   plan or no execution time before or after).
//! - Every failure names its rule, the measured values and the limit; the
//!   message carries both plans in short form (node types, relations, index
//!   names, costs), so the page explains itself.
//! - `expect_index` is looked for in every node of the plan after the change
//!   (index, index-only and bitmap index scans name their index), including
//!   sub-plans.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::ExplainQuery;

/// Nodes kept in a short plan; a larger plan says how many were left out.
pub const MAX_NODES: usize = 40;

/// One node of a plan, in pre-order with its depth (0 is the top).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    pub depth: u32,
    pub node_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    pub total_cost: f64,
}

/// A plan in short form: what a DBA reads at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanShape {
    /// The top node's total cost, in the planner's units.
    pub total_cost: f64,
    /// With `analyze`: the server's `Execution Time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planning_ms: Option<f64>,
    pub nodes: Vec<PlanNode>,
    /// Nodes beyond [`MAX_NODES`], left out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nodes_left_out: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why the output of `EXPLAIN (FORMAT JSON)` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected EXPLAIN output: {0}")]
pub struct ShapeError(&'static str);

impl PlanShape {
    /// Read the JSON document `EXPLAIN (FORMAT JSON)` returns (an array of one
    /// object with a `Plan`).
    pub fn from_explain(doc: &Value) -> Result<PlanShape, ShapeError> {
        let top = match doc {
            Value::Array(a) => a.first().ok_or(ShapeError("an empty array"))?,
            other => other,
        };
        let plan = top.get("Plan").ok_or(ShapeError("no \"Plan\""))?;
        let total_cost = cost(plan).ok_or(ShapeError("no \"Total Cost\""))?;
        let mut nodes = Vec::new();
        let mut left_out = 0;
        walk(plan, 0, &mut nodes, &mut left_out);
        Ok(PlanShape {
            total_cost,
            execution_ms: top.get("Execution Time").and_then(Value::as_f64),
            planning_ms: top.get("Planning Time").and_then(Value::as_f64),
            nodes,
            nodes_left_out: left_out,
        })
    }

    /// Whether any node scans `index`.
    pub fn uses_index(&self, index: &str) -> bool {
        self.nodes.iter().any(|n| n.index.as_deref() == Some(index))
    }

    /// Every index the plan scans, in plan order, once each.
    pub fn indexes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for i in self.nodes.iter().filter_map(|n| n.index.as_deref()) {
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// One line: `Aggregate (cost 274.50) > Bitmap Heap Scan on t (cost 272.49) >
    /// Bitmap Index Scan using idx (cost 10.29)`; siblings in `[a; b]`.
    pub fn short(&self) -> String {
        let mut roots = Vec::new();
        let mut i = 0;
        while i < self.nodes.len() {
            let (text, next) = self.render(i);
            roots.push(text);
            i = next;
        }
        let mut text = roots.join("; ");
        if self.nodes_left_out > 0 {
            text.push_str(&format!(" (+{} more nodes)", self.nodes_left_out));
        }
        if let Some(ms) = self.execution_ms {
            text.push_str(&format!(", executed in {} ms", ms3(ms)));
        }
        text
    }

    /// Node `i` and its subtree; the index after the subtree.
    fn render(&self, i: usize) -> (String, usize) {
        let node = &self.nodes[i];
        let mut text = node.node_type.clone();
        if let Some(index) = &node.index {
            text.push_str(&format!(" using {index}"));
        }
        if let Some(relation) = &node.relation {
            text.push_str(&format!(" on {relation}"));
        }
        text.push_str(&format!(" (cost {:.2})", node.total_cost));
        let mut children = Vec::new();
        let mut j = i + 1;
        while j < self.nodes.len() && self.nodes[j].depth > node.depth {
            let (child, next) = self.render(j);
            children.push(child);
            j = next;
        }
        match children.as_slice() {
            [] => {}
            [only] => text.push_str(&format!(" > {only}")),
            all => text.push_str(&format!(" > [{}]", all.join("; "))),
        }
        (text, j)
    }
}

fn cost(node: &Value) -> Option<f64> {
    node.get("Total Cost").and_then(Value::as_f64)
}

fn walk(node: &Value, depth: u32, out: &mut Vec<PlanNode>, left_out: &mut u32) {
    if out.len() >= MAX_NODES {
        *left_out += 1;
    } else {
        out.push(PlanNode {
            depth,
            node_type: node
                .get("Node Type")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            relation: node
                .get("Relation Name")
                .and_then(Value::as_str)
                .map(str::to_string),
            index: node
                .get("Index Name")
                .and_then(Value::as_str)
                .map(str::to_string),
            total_cost: cost(node).unwrap_or(0.0),
        });
    }
    for child in node
        .get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(child, depth + 1, out, left_out);
    }
}

/// One query's EXPLAIN at one moment: its plan, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Measurement {
    /// The plan in short form, or what went wrong.
    pub fn short(&self) -> String {
        match (&self.plan, &self.error) {
            (Some(p), _) => p.short(),
            (None, Some(e)) => format!("no plan ({e})"),
            (None, None) => "no plan".to_string(),
        }
    }
}

/// The verdict on one query: the measured values, the limits and every rule
/// that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainResult {
    pub name: String,
    pub sql: String,
    pub passed: bool,
    pub analyze: bool,
    pub expect_index: Option<String>,
    /// Whether the plan used `expect_index` (absent without one, or without a plan).
    pub index_used_before: Option<bool>,
    pub index_used_after: Option<bool>,
    pub cost_before: Option<f64>,
    pub cost_after: Option<f64>,
    /// after / before, rounded to 3 decimals.
    pub cost_ratio: Option<f64>,
    pub max_cost_ratio: Option<f64>,
    pub time_before_ms: Option<f64>,
    pub time_after_ms: Option<f64>,
    pub time_ratio: Option<f64>,
    pub max_time_ratio: Option<f64>,
    /// Each failed rule in words; empty when the query passed.
    pub failures: Vec<String>,
    pub before: Measurement,
    pub after: Measurement,
}

impl ExplainResult {
    /// The verdict in one paragraph, with both plans in short form.
    pub fn message(&self) -> String {
        let what = if self.passed {
            format!("explain `{}` passed: {}", self.name, self.figures())
        } else {
            format!("explain `{}`: {}", self.name, self.failures.join("; "))
        };
        format!(
            "{what}; before: {}; after: {}",
            self.before.short(),
            self.after.short()
        )
    }

    /// `cost 550.26 -> 274.50 (x0.499), time 5.1 ms -> 0.4 ms (x0.078), uses idx`.
    pub fn figures(&self) -> String {
        let mut parts = Vec::new();
        if let (Some(b), Some(a)) = (self.cost_before, self.cost_after) {
            parts.push(format!(
                "cost {b:.2} -> {a:.2}{}",
                self.cost_ratio
                    .map(|r| format!(" (x{r})"))
                    .unwrap_or_default()
            ));
        } else if let Some(a) = self.cost_after {
            parts.push(format!("cost {a:.2}"));
        }
        if let (Some(b), Some(a)) = (self.time_before_ms, self.time_after_ms) {
            parts.push(format!(
                "time {} ms -> {} ms{}",
                ms3(b),
                ms3(a),
                self.time_ratio
                    .map(|r| format!(" (x{r})"))
                    .unwrap_or_default()
            ));
        }
        if let (Some(i), Some(true)) = (&self.expect_index, self.index_used_after) {
            parts.push(format!("uses {i}"));
        }
        parts.join(", ")
    }
}

/// Judge one query on its plans before and after the change.
pub fn judge(q: &ExplainQuery, before: Measurement, after: Measurement) -> ExplainResult {
    let mut failures = Vec::new();
    let b = before.plan.as_ref();
    let a = after.plan.as_ref();
    if let Some(e) = &after.error {
        failures.push(format!("EXPLAIN failed after the change: {e}"));
    }
    let used = |p: Option<&PlanShape>| {
        q.expect_index
            .as_deref()
            .and_then(|i| p.map(|p| p.uses_index(i)))
    };
    let (index_used_before, index_used_after) = (used(b), used(a));
    if let (Some(index), Some(plan)) = (&q.expect_index, a)
        && !plan.uses_index(index)
    {
        let scans = plan.indexes();
        failures.push(format!(
            "index `{index}` is not used after the change (the plan {})",
            if scans.is_empty() {
                "uses no index".to_string()
            } else {
                format!("uses {}", scans.join(", "))
            }
        ));
    }
    let cost_ratio = ratio(b.map(|p| p.total_cost), a.map(|p| p.total_cost));
    if let Some(max) = q.max_cost_ratio {
        match cost_ratio {
            Some(r) if r > max => failures.push(format!(
                "total cost grew from {:.2} to {:.2} (x{}, max_cost_ratio {})",
                b.map_or(0.0, |p| p.total_cost),
                a.map_or(0.0, |p| p.total_cost),
                r,
                max
            )),
            Some(_) => {}
            None if a.is_some() => failures.push(format!(
                "max_cost_ratio {max} cannot be judged: there is no plan from before the change"
            )),
            None => {}
        }
    }
    let time = |p: Option<&PlanShape>| p.and_then(|p| p.execution_ms);
    let time_ratio = ratio(time(b), time(a));
    if let Some(max) = q.max_time_ratio {
        match time_ratio {
            Some(r) if r > max => failures.push(format!(
                "execution time grew from {} ms to {} ms (x{}, max_time_ratio {})",
                ms3(time(b).unwrap_or(0.0)),
                ms3(time(a).unwrap_or(0.0)),
                r,
                max
            )),
            Some(_) => {}
            None if a.is_some() => failures.push(format!(
                "max_time_ratio {max} cannot be judged: no execution time from {}",
                if time(b).is_none() {
                    "before the change"
                } else {
                    "after the change"
                }
            )),
            None => {}
        }
    }
    ExplainResult {
        name: q.name.clone(),
        sql: q.sql.clone(),
        passed: failures.is_empty(),
        analyze: q.analyze,
        expect_index: q.expect_index.clone(),
        index_used_before,
        index_used_after,
        cost_before: b.map(|p| p.total_cost),
        cost_after: a.map(|p| p.total_cost),
        cost_ratio,
        max_cost_ratio: q.max_cost_ratio,
        time_before_ms: time(b),
        time_after_ms: time(a),
        time_ratio,
        max_time_ratio: q.max_time_ratio,
        failures,
        before,
        after,
    }
}

/// The smallest cost or time a ratio divides by: a before of 0 (a cost below
/// the planner's 0.01, a time below its 0.001 ms) must not make the ratio
/// infinite, which JSON cannot carry.
const FLOOR: f64 = 0.001;

/// after / before, rounded to 3 decimals.
fn ratio(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    let (b, a) = (before?, after?);
    Some(((a.max(0.0) / b.max(FLOOR)) * 1000.0).round() / 1000.0)
}

fn ms3(ms: f64) -> String {
    format!("{}", (ms * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    /// `EXPLAIN (FORMAT JSON)` of the demo's dashboard query, without the index.
    fn seq_scan() -> Value {
        json!([{"Plan": {
            "Node Type": "Aggregate", "Strategy": "Plain", "Startup Cost": 550.25, "Total Cost": 550.26,
            "Plans": [{"Node Type": "Seq Scan", "Parent Relationship": "Outer",
                       "Relation Name": "job_execution_summaries", "Alias": "job_execution_summaries",
                       "Startup Cost": 0.0, "Total Cost": 550.0}]}}])
    }

    /// The same query with the index, analyzed.
    fn index_scan() -> Value {
        json!([{"Plan": {
            "Node Type": "Aggregate", "Total Cost": 274.5,
            "Plans": [{"Node Type": "Bitmap Heap Scan", "Relation Name": "job_execution_summaries", "Total Cost": 272.49,
                       "Plans": [{"Node Type": "Bitmap Index Scan", "Index Name": "idx_cancel", "Total Cost": 10.29}]}]},
            "Planning Time": 0.2, "Execution Time": 0.41}])
    }

    fn shape(v: Value) -> Measurement {
        Measurement {
            name: "dashboard".into(),
            plan: Some(PlanShape::from_explain(&v).unwrap()),
            error: None,
        }
    }

    fn query() -> ExplainQuery {
        ExplainQuery {
            name: "dashboard".into(),
            sql: "SELECT count(*) FROM job_execution_summaries".into(),
            expect_index: Some("idx_cancel".into()),
            max_cost_ratio: Some(1.0),
            analyze: false,
            max_time_ratio: None,
            timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_plan_reads_as_one_line_with_node_types_relations_indexes_and_costs() {
        let p = PlanShape::from_explain(&index_scan()).unwrap();
        assert_eq!(
            p.short(),
            "Aggregate (cost 274.50) > Bitmap Heap Scan on job_execution_summaries (cost 272.49) > \
             Bitmap Index Scan using idx_cancel (cost 10.29), executed in 0.41 ms"
        );
        assert_eq!((p.total_cost, p.execution_ms), (274.5, Some(0.41)));
        assert_eq!(p.indexes(), ["idx_cancel"]);
        let join = json!([{"Plan": {"Node Type": "Hash Join", "Total Cost": 30.0, "Plans": [
            {"Node Type": "Seq Scan", "Relation Name": "a", "Total Cost": 10.0},
            {"Node Type": "Hash", "Total Cost": 12.0, "Plans": [
                {"Node Type": "Index Only Scan", "Index Name": "b_pkey", "Relation Name": "b", "Total Cost": 11.0}]}]}}]);
        assert_eq!(
            PlanShape::from_explain(&join).unwrap().short(),
            "Hash Join (cost 30.00) > [Seq Scan on a (cost 10.00); Hash (cost 12.00) > \
             Index Only Scan using b_pkey on b (cost 11.00)]"
        );
        assert!(PlanShape::from_explain(&json!([{}])).is_err());
    }

    #[test]
    fn a_large_plan_keeps_its_first_nodes_and_says_how_many_it_left_out() {
        let mut node = json!({"Node Type": "Result", "Total Cost": 0.01});
        for _ in 0..MAX_NODES + 4 {
            node = json!({"Node Type": "Append", "Total Cost": 1.0, "Plans": [node]});
        }
        let p = PlanShape::from_explain(&json!([{"Plan": node}])).unwrap();
        assert_eq!((p.nodes.len(), p.nodes_left_out), (MAX_NODES, 5));
        assert!(p.short().ends_with("(+5 more nodes)"), "{}", p.short());
    }

    #[test]
    fn the_expected_index_used_and_a_cheaper_plan_pass() {
        let r = judge(&query(), shape(seq_scan()), shape(index_scan()));
        assert!(r.passed, "{:?}", r.failures);
        assert_eq!(
            (r.index_used_before, r.index_used_after),
            (Some(false), Some(true))
        );
        assert_eq!(
            (r.cost_before, r.cost_after, r.cost_ratio),
            (Some(550.26), Some(274.5), Some(0.499))
        );
        assert!(
            r.message().starts_with(
                "explain `dashboard` passed: cost 550.26 -> 274.50 (x0.499), uses idx_cancel; before: Aggregate"
            ),
            "{}",
            r.message()
        );
    }

    #[test]
    fn an_unused_index_fails_and_the_message_carries_both_plans() {
        let r = judge(&query(), shape(seq_scan()), shape(seq_scan()));
        assert!(!r.passed);
        assert_eq!(
            r.failures,
            ["index `idx_cancel` is not used after the change (the plan uses no index)"]
        );
        let m = r.message();
        assert!(
            m.contains("before: Aggregate (cost 550.26) > Seq Scan on job_execution_summaries (cost 550.00); after: Aggregate"),
            "{m}"
        );
    }

    #[test]
    fn a_cost_past_the_ratio_fails_with_the_figures() {
        let q = ExplainQuery {
            expect_index: None,
            max_cost_ratio: Some(1.5),
            ..query()
        };
        let r = judge(&q, shape(index_scan()), shape(seq_scan()));
        assert_eq!(
            r.failures,
            ["total cost grew from 274.50 to 550.26 (x2.005, max_cost_ratio 1.5)"]
        );
        assert_eq!(r.index_used_after, None);
    }

    #[test]
    fn missing_data_never_passes() {
        let failed = Measurement {
            name: "dashboard".into(),
            plan: None,
            error: Some("statement_timeout 30000ms reached".into()),
        };
        let r = judge(&query(), shape(seq_scan()), failed.clone());
        assert!(!r.passed);
        assert!(r.failures[0].starts_with("EXPLAIN failed after the change: statement_timeout"));
        assert!(
            r.message()
                .ends_with("after: no plan (statement_timeout 30000ms reached)")
        );
        // No plan before, but a ratio to judge: refused, not passed.
        let q = ExplainQuery {
            expect_index: None,
            ..query()
        };
        let r = judge(&q, failed, shape(index_scan()));
        assert_eq!(
            r.failures,
            ["max_cost_ratio 1 cannot be judged: there is no plan from before the change"]
        );
        // A time ratio without execution times (a plan-only EXPLAIN before).
        let q = ExplainQuery {
            expect_index: None,
            max_cost_ratio: None,
            analyze: true,
            max_time_ratio: Some(1.0),
            ..query()
        };
        let r = judge(&q, shape(seq_scan()), shape(index_scan()));
        assert_eq!(
            r.failures,
            ["max_time_ratio 1 cannot be judged: no execution time from before the change"]
        );
    }

    #[test]
    fn execution_times_are_recorded_and_judged() {
        let q = ExplainQuery {
            expect_index: None,
            max_cost_ratio: None,
            analyze: true,
            max_time_ratio: Some(2.0),
            ..query()
        };
        let mut slow = index_scan();
        slow[0]["Execution Time"] = json!(12.0);
        let r = judge(&q, shape(slow.clone()), shape(index_scan()));
        assert!(r.passed);
        assert_eq!(
            (r.time_before_ms, r.time_after_ms, r.time_ratio),
            (Some(12.0), Some(0.41), Some(0.034))
        );
        assert!(
            r.figures().contains("time 12 ms -> 0.41 ms (x0.034)"),
            "{}",
            r.figures()
        );
        let r = judge(&q, shape(index_scan()), shape(slow));
        assert_eq!(
            r.failures,
            ["execution time grew from 0.41 ms to 12 ms (x29.268, max_time_ratio 2)"]
        );
    }

    #[test]
    fn a_zero_cost_before_does_not_make_the_ratio_infinite() {
        assert_eq!(ratio(Some(0.0), Some(0.0)), Some(0.0));
        assert_eq!(ratio(Some(0.0), Some(1.0)), Some(1000.0));
        let r = judge(&query(), shape(index_scan()), shape(index_scan()));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(serde_json::from_value::<ExplainResult>(json).unwrap(), r);
    }
}
