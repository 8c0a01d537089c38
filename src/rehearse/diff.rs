//! What differs between two catalog fingerprints, in words a DBA reads at a
//! glance.
//!
//! Pure logic, no I/O. Invariants:
//! - Every difference names one object, by kind and name; the list is sorted
//!   like the fingerprint (containers first, then by name), so the same two
//!   fingerprints always give the same report.
//! - Something that contains others is reported once: when a table is missing
//!   (or left behind), its columns, constraints, indexes and triggers are not
//!   listed too. An attribute that changed on an object present on both sides
//!   is always listed.
//! - Identical fingerprints give no difference at all: an empty list is the
//!   only "passed".

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::rehearse::fingerprint::{Fingerprint, ObjectId, ObjectKind};

/// When a rehearsal's second fingerprint is taken, as its report says it.
pub const AFTER_DOWN: &str = "after the down scripts";

/// Values longer than this (view definitions, function signatures with many
/// arguments) are not quoted in the sentence; the JSON keeps them whole.
const QUOTED_UP_TO: usize = 80;

/// How one object differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// In the first fingerprint, not in the second: the down scripts dropped
    /// something that was there before the migrations.
    Missing,
    /// In the second, not in the first: something the migrations created
    /// that the down scripts left behind.
    Left,
    /// On both sides, with another value for `attribute` (`None`: the catalog
    /// has none, e.g. no default).
    Changed {
        attribute: String,
        before: Option<String>,
        after: Option<String>,
    },
    /// A table's rows are not as they were after the captured data was given
    /// back (see `rehearse::data`): `differ` rows (known for a captured table),
    /// and its row count before and after. `undone` names the migrations
    /// undone ("V4"); `captured`: whether they capture this table.
    Rows {
        differ: Option<u64>,
        rows_before: u64,
        rows_after: u64,
        undone: String,
        captured: bool,
    },
}

/// One object that is not as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub kind: ObjectKind,
    pub object: String,
    #[serde(flatten)]
    pub change: Change,
    /// The migration whose up script first changed this object, when the
    /// comparison knows the steps in between ([`attribute`]); its down script
    /// is the one to fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
}

impl Difference {
    /// The sentence for a report; `phase` says when the second fingerprint
    /// was taken ("after the down scripts").
    /// With [`Difference::changed_by`] known, the phase names that
    /// migration's down script instead.
    pub fn describe(&self, phase: &str) -> String {
        let Difference {
            kind,
            object,
            change,
            changed_by,
        } = self;
        let by;
        let phase = match changed_by {
            Some(label) => {
                by = format!("after {label}'s down script");
                by.as_str()
            }
            None => phase,
        };
        match change {
            Change::Rows {
                differ,
                rows_before,
                rows_after,
                undone,
                captured,
            } => {
                let rows = match differ {
                    Some(1) => "1 row differs".to_string(),
                    Some(n) => format!("{n} rows differ"),
                    None => "rows differ".to_string(),
                };
                let data = if *captured {
                    "captured data"
                } else {
                    "captured data; it does not capture this table"
                };
                let count = if rows_before != rows_after {
                    format!("; row count {rows_before} → {rows_after}")
                } else {
                    String::new()
                };
                format!("{kind} `{object}`: {rows} after undoing {undone} ({data}){count}")
            }
            Change::Missing => format!("{kind} `{object}` is missing {phase}"),
            Change::Left => format!("{kind} `{object}` still exists {phase}"),
            Change::Changed {
                attribute,
                before,
                after,
            } => {
                let long = |v: &Option<String>| v.as_ref().is_some_and(|v| is_long(v));
                if long(before) || long(after) {
                    format!("{kind} `{object}` {attribute} changed {phase}")
                } else {
                    format!(
                        "{kind} `{object}` {attribute} changed from {} to {} {phase}",
                        value(before),
                        value(after)
                    )
                }
            }
        }
    }
}

fn is_long(v: &str) -> bool {
    v.len() > QUOTED_UP_TO || v.contains('\n')
}

fn value(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("`{v}`"),
        None => "none".to_string(),
    }
}

/// Every difference between `before` and `after` (see the module's
/// invariants).
pub fn diff(before: &Fingerprint, after: &Fingerprint) -> Vec<Difference> {
    let missing: BTreeSet<&ObjectId> = before
        .objects
        .keys()
        .filter(|id| !after.objects.contains_key(*id))
        .collect();
    let left: BTreeSet<&ObjectId> = after
        .objects
        .keys()
        .filter(|id| !before.objects.contains_key(*id))
        .collect();
    // A child is folded into its container's difference of the same sense.
    let container_in = |set: &BTreeSet<&ObjectId>, parent: &Option<String>| {
        parent.as_ref().is_some_and(|parent| {
            set.iter()
                .any(|id| id.kind.is_container() && &id.name == parent)
        })
    };
    let mut out = Vec::new();
    for (id, object) in &before.objects {
        match after.objects.get(id) {
            None => {
                if !container_in(&missing, &object.parent) {
                    out.push(difference(id, Change::Missing));
                }
            }
            Some(now) => {
                let attributes: BTreeSet<&String> = object
                    .attributes
                    .keys()
                    .chain(now.attributes.keys())
                    .collect();
                for attribute in attributes {
                    let was = object.attributes.get(attribute).cloned().flatten();
                    let is = now.attributes.get(attribute).cloned().flatten();
                    if was != is {
                        out.push(difference(
                            id,
                            Change::Changed {
                                attribute: attribute.clone(),
                                before: was,
                                after: is,
                            },
                        ));
                    }
                }
            }
        }
    }
    for id in &left {
        if !container_in(&left, &after.objects[*id].parent) {
            out.push(difference(id, Change::Left));
        }
    }
    // Sorted by object, whatever the sense of the difference.
    out.sort_by(|a, b| (a.kind, &a.object).cmp(&(b.kind, &b.object)));
    out
}

fn difference(id: &ObjectId, change: Change) -> Difference {
    Difference {
        kind: id.kind,
        object: id.name.clone(),
        change,
        changed_by: None,
    }
}

/// Name, in each difference, the first of `steps` (a label and the
/// fingerprint taken right after that migration's up script, in order) at
/// which the object (for a changed attribute: that attribute) was no longer
/// as in `before`. A difference no step explains (a down script that dropped
/// something no up script touched) keeps `None`.
pub fn attribute(
    differences: &mut [Difference],
    before: &Fingerprint,
    steps: &[(String, Fingerprint)],
) {
    for d in differences {
        let id = ObjectId {
            kind: d.kind,
            name: d.object.clone(),
        };
        let was = before.objects.get(&id);
        d.changed_by = steps
            .iter()
            .find(|(_, f)| {
                let now = f.objects.get(&id);
                match &d.change {
                    Change::Changed { attribute, .. } => {
                        let value = |o: Option<&crate::rehearse::fingerprint::CatalogObject>| {
                            o.and_then(|o| o.attributes.get(attribute).cloned().flatten())
                        };
                        now.is_none() || value(was) != value(now)
                    }
                    Change::Missing | Change::Left => was != now,
                    // Named by `undone` already.
                    Change::Rows { .. } => false,
                }
            })
            .map(|(label, _)| label.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rehearse::fingerprint::CatalogObject;

    const PHASE: &str = "after the down scripts";

    fn object(parent: Option<&str>, attributes: &[(&str, Option<&str>)]) -> CatalogObject {
        CatalogObject {
            parent: parent.map(str::to_string),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    fn with(objects: &[(ObjectKind, &str, CatalogObject)]) -> Fingerprint {
        Fingerprint {
            objects: objects
                .iter()
                .map(|(kind, name, o)| {
                    (
                        ObjectId {
                            kind: *kind,
                            name: name.to_string(),
                        },
                        o.clone(),
                    )
                })
                .collect(),
        }
    }

    fn sentences(d: &[Difference]) -> Vec<String> {
        d.iter().map(|d| d.describe(PHASE)).collect()
    }

    fn customer() -> Vec<(ObjectKind, &'static str, CatalogObject)> {
        vec![
            (
                ObjectKind::Table,
                "customer",
                object(None, &[("kind", Some("table"))]),
            ),
            (
                ObjectKind::Column,
                "customer.loyalty_tier",
                object(
                    Some("customer"),
                    &[("default", Some("'bronze'::text")), ("type", Some("text"))],
                ),
            ),
            (
                ObjectKind::Index,
                "customer_tier_idx",
                object(
                    Some("customer"),
                    &[
                        (
                            "definition",
                            Some(
                                "CREATE INDEX customer_tier_idx ON public.customer USING btree (loyalty_tier)",
                            ),
                        ),
                        ("validity", Some("valid")),
                    ],
                ),
            ),
        ]
    }

    #[test]
    fn identical_fingerprints_have_no_difference() {
        let a = with(&customer());
        assert_eq!(diff(&a, &a.clone()), vec![]);
        assert_eq!(
            diff(&Fingerprint::default(), &Fingerprint::default()),
            vec![]
        );
    }

    #[test]
    fn an_index_left_behind_is_named() {
        let before = with(&customer()[..2]);
        let after = with(&customer());
        assert_eq!(
            sentences(&diff(&before, &after)),
            ["index `customer_tier_idx` still exists after the down scripts"]
        );
    }

    #[test]
    fn a_changed_default_says_from_what_to_what() {
        let before = with(&customer());
        let mut after = before.clone();
        after
            .objects
            .values_mut()
            .find(|o| o.attributes.contains_key("default"))
            .unwrap()
            .attributes
            .insert("default".into(), None);
        let d = diff(&before, &after);
        assert_eq!(
            sentences(&d),
            [
                "column `customer.loyalty_tier` default changed from `'bronze'::text` to none after the down scripts"
            ]
        );
        assert_eq!(
            d[0].change,
            Change::Changed {
                attribute: "default".into(),
                before: Some("'bronze'::text".into()),
                after: None
            }
        );
    }

    #[test]
    fn a_missing_table_is_one_difference_not_one_per_column() {
        let before = with(&customer());
        let after = Fingerprint::default();
        assert_eq!(
            sentences(&diff(&before, &after)),
            ["table `customer` is missing after the down scripts"]
        );
        // The same for a table left behind.
        assert_eq!(
            sentences(&diff(&after, &before)),
            ["table `customer` still exists after the down scripts"]
        );
    }

    #[test]
    fn a_child_of_a_table_still_there_is_reported() {
        let before = with(&customer());
        let after = with(&[customer()[0].clone(), customer()[2].clone()]);
        assert_eq!(
            sentences(&diff(&before, &after)),
            ["column `customer.loyalty_tier` is missing after the down scripts"]
        );
    }

    #[test]
    fn a_long_value_is_named_not_quoted() {
        let long = "SELECT ".to_string() + &"c, ".repeat(40);
        let before = with(&[(
            ObjectKind::View,
            "dashboard",
            object(None, &[("definition", Some(long.as_str()))]),
        )]);
        let after = with(&[(
            ObjectKind::View,
            "dashboard",
            object(None, &[("definition", Some("SELECT 1"))]),
        )]);
        let d = diff(&before, &after);
        assert_eq!(
            sentences(&d),
            ["view `dashboard` definition changed after the down scripts"]
        );
        // The JSON keeps both values whole.
        let json = serde_json::to_value(&d[0]).unwrap();
        assert_eq!(json["kind"], "view");
        assert_eq!(json["change"], "changed");
        assert_eq!(json["before"], long.as_str());
        assert_eq!(json["after"], "SELECT 1");
    }

    #[test]
    fn each_difference_names_the_migration_that_first_changed_it() {
        let f0 = with(&customer()[..2]);
        // V1 changes the default, V2 adds the index; both down scripts forget.
        let mut f1 = f0.clone();
        f1.objects
            .values_mut()
            .find(|o| o.attributes.contains_key("default"))
            .unwrap()
            .attributes
            .insert("default".into(), Some("'silver'::text".into()));
        let mut f2 = f1.clone();
        let index = customer()[2].clone();
        f2.objects.insert(
            ObjectId {
                kind: index.0,
                name: index.1.into(),
            },
            index.2,
        );
        let mut d = diff(&f0, &f2);
        attribute(
            &mut d,
            &f0,
            &[("V1__tiers".into(), f1), ("V2__index".into(), f2.clone())],
        );
        assert_eq!(
            sentences(&d),
            [
                "column `customer.loyalty_tier` default changed from `'bronze'::text` to `'silver'::text` after V1__tiers's down script",
                "index `customer_tier_idx` still exists after V2__index's down script",
            ]
        );
        // What no up script touched is the down scripts' doing as a whole.
        let mut d = diff(&f0, &Fingerprint::default());
        attribute(&mut d, &f0, &[("V1__tiers".into(), f0.clone())]);
        assert_eq!(
            sentences(&d),
            ["table `customer` is missing after the down scripts"]
        );
    }

    #[test]
    fn differences_are_sorted_by_kind_then_name() {
        let before = with(&[
            (ObjectKind::Function, "b()", object(None, &[])),
            (ObjectKind::Index, "z_idx", object(Some("t"), &[])),
        ]);
        let after = with(&[
            (ObjectKind::Function, "a()", object(None, &[])),
            (ObjectKind::Table, "t", object(None, &[])),
            (ObjectKind::Index, "z_idx", object(Some("t"), &[])),
        ]);
        assert_eq!(
            sentences(&diff(&before, &after)),
            [
                "table `t` still exists after the down scripts",
                "function `a()` still exists after the down scripts",
                "function `b()` is missing after the down scripts",
            ]
        );
    }
}
