//! The few schemas of the OpenAPI document that no Rust type of the API derives,
//! each written once here:
//!
//! - a run event, which the API serves as it was stored: its JSON is built by
//!   `crate::run::event`, whose kinds each add their own fields, so the document
//!   promises the fields every event has and allows the rest;
//! - the values of the columns the state database keeps as text (a run's or an
//!   undo's phase and outcome, an undo's mode, a notification's severity and status, an escalation's trigger
//!   and status), for the fields that carry them.

use std::borrow::Cow;

use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, Schema, SchemaType};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// One event of a run as `GET /v1/runs/{id}/events` serves it.
pub struct RunEvent;

impl PartialSchema for RunEvent {
    fn schema() -> RefOr<Schema> {
        event()
            .description(Some(
                "One event, as `pgshepherd run --json` prints it, plus `seq`: its position in \
                 the daemon's event log (the cursor for `after` and `Last-Event-ID`). Each kind \
                 of event adds its own fields; decision events carry the measured value, the \
                 threshold and the counts.",
            ))
            .property("seq", ObjectBuilder::new().schema_type(Type::Integer))
            .required("seq")
            .property("run_id", string())
            .required("run_id")
            .into()
    }
}

impl ToSchema for RunEvent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Event")
    }
}

/// The latest `check_sample` event of one soak check, in a run's full view (an
/// event without `run_id`: the view names the run).
pub struct CheckSample;

impl PartialSchema for CheckSample {
    fn schema() -> RefOr<Schema> {
        event()
            .description(Some(
                "The latest `check_sample` event of one soak check: the check's name, its \
                 value and verdict, as the event carries them.",
            ))
            .property("check", string())
            .required("check")
            .into()
    }
}

impl ToSchema for CheckSample {}

/// What every event has: when, its name, and its step (null outside a step).
/// Further fields are allowed.
fn event() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "ts",
            string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .required("ts")
        .property(
            "event",
            string().description(Some(
                "snake_case name, e.g. run_submitted, run_approved, abort_requested, \
                 acknowledged, run_resumed, migration_applied, check_sample, check_verdict, \
                 rollback_started, run_finished",
            )),
        )
        .required("event")
        .property(
            "step",
            ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null])),
        )
        .required("step")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)))
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// A string that is one of `values`, or null when `nullable`.
fn one_of(values: &[&str], nullable: bool) -> Object {
    let mut allowed: Vec<serde_json::Value> = values.iter().map(|v| (*v).into()).collect();
    let kind = if nullable {
        allowed.push(serde_json::Value::Null);
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    ObjectBuilder::new()
        .schema_type(kind)
        .enum_values(Some(allowed))
        .build()
}

/// `runs.phase`.
pub fn phase() -> Object {
    one_of(
        &[
            "rehearsing",
            "pending_approval",
            "queued",
            "active",
            "finished",
        ],
        false,
    )
}

/// A run's rehearsal status (see `RehearsalView`).
pub fn rehearsal_status() -> Object {
    one_of(&["pending", "running", "passed", "failed"], false)
}

/// `runs.outcome`: null until the run finishes.
pub fn outcome() -> Object {
    one_of(&crate::run::Outcome::ALL.map(|o| o.as_str()), true)
}

/// `notifications.severity`.
pub fn severity() -> Object {
    one_of(&["info", "warning", "critical"], false)
}

/// `notifications.status`.
pub fn delivery_status() -> Object {
    one_of(&["pending", "delivered", "failed", "dropped"], false)
}

/// `escalations.trigger`.
pub fn escalation_trigger() -> Object {
    one_of(&["needs_human", "rollback_failed", "breach"], false)
}

/// `escalations.status`.
pub fn escalation_status() -> Object {
    one_of(&["active", "acknowledged", "exhausted"], false)
}

/// An undo's `mode` (from [`crate::undo::revert::Mode`]).
pub fn undo_mode() -> Object {
    let modes: Vec<&str> = <crate::undo::revert::Mode as clap::ValueEnum>::value_variants()
        .iter()
        .map(|m| m.as_str())
        .collect();
    one_of(&modes, false)
}

/// `undos.outcome`: null until the undo finishes.
pub fn undo_outcome() -> Object {
    one_of(
        &[
            "reverted",
            "conflicts_left",
            "refused",
            "failed",
            "cancelled",
        ],
        true,
    )
}
