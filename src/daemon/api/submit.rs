//! `POST /v1/runs`: compile the submitted bundle exactly as `check` would, refuse
//! it with every located problem (422), or store it as a new run with its
//! `run_submitted` event in one transaction and wake the scheduler.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use crate::config::Role;
use crate::daemon::api::auth::Caller;
use crate::daemon::api::bundle::{self, Bundle};
use crate::daemon::api::error::{ApiError, AuditDetail, AuditRun, BadRequest, Invalid, TooLarge};
use crate::daemon::api::routes::{MAX_BODY_BYTES, SUBMIT};
use crate::daemon::api::view::{self, RunView};
use crate::daemon::shared::SharedRef;
use crate::daemon::store;
use crate::notify::outbox::RunNotify;
use crate::plan::{Diagnostic, Diagnostics, Plan};
use crate::run::checkpoint::Checkpoint;
use crate::run::event::{Event, EventKind};

/// A request body, as JSON of type `T` (`what`, for the message): 413 over the
/// size limit, 400 when it is not JSON or not of that shape (with serde's
/// message and position).
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} MiB",
                    MAX_BODY_BYTES / 1024 / 1024
                ),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not a valid {what}: {e}")))
}

/// Submit a plan bundle (role: submit)
///
/// The bundle is compiled exactly as `pgshepherd check` compiles the plan and its
/// migration directory, and the names only the daemon knows are checked too: the
/// plan's target, its notification channels and its escalation policy must be
/// defined in the daemon's config. Any problem, and a bundle that breaks its
/// limits (too many files, a file name with a directory, a duplicate, a sha256
/// that does not match), is a 422 listing every problem with its file, line and
/// column. A valid bundle becomes a run: `rehearsing` when the plan says
/// `rehearsal: required` (approval, if required, follows a passed rehearsal),
/// else `pending_approval` when approval is required, else `queued`.
#[utoipa::path(
    post,
    path = SUBMIT.path,
    operation_id = "submitRun",
    tag = "runs",
    request_body = Bundle,
    responses(
        (status = 201, description = "The run was created.", body = RunView,
            headers(("Location" = String, description = "`/v1/runs/{id}`"))),
        (status = 400, response = BadRequest),
        (status = 413, response = TooLarge),
        (status = 422, response = Invalid),
    ),
)]
pub async fn submit(
    State(shared): State<SharedRef>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Submit)?;
    let bundle: Bundle = json_body(body, "submission")?;
    let plan_path = bundle.plan.path.clone();
    let bundle = bundle
        .normalise()
        .map_err(|e| ApiError::unprocessable(e.to_string(), vec![e.diagnostic(&plan_path)]))?;
    let plan = validate(&shared.config.targets, &shared.config.notify, &bundle)
        .map_err(|d| ApiError::invalid(d.0))?;

    let sha = bundle.sha256();
    // The daemon's config may require approval for a target whatever the plan says.
    let requires_approval =
        plan.approval.required || shared.config.approval_required.contains(&plan.target);
    // A run to be rehearsed waits for its rehearsal first (see
    // `crate::daemon::rehearsal`), then for approval or its turn.
    let rehearsal_required = plan.rehearsal_required;
    let phase = if rehearsal_required {
        "rehearsing"
    } else if requires_approval {
        "pending_approval"
    } else {
        "queued"
    };
    let bundle_json =
        serde_json::to_value(&bundle).map_err(|e| ApiError::internal(e.to_string()))?;
    let checkpoint = Checkpoint::submitted(rehearsal_required);
    let state_name = checkpoint.state.name();
    let checkpoint =
        serde_json::to_value(checkpoint).map_err(|e| ApiError::internal(e.to_string()))?;
    let notify = serde_json::to_value(RunNotify::from_plan(&plan))
        .map_err(|e| ApiError::internal(e.to_string()))?;

    let mut client = shared.pool.get().await?;
    let tx = client.transaction().await?;
    // Submissions for one target commit one at a time, so a run's `seq` (its
    // place in the target's queue) is visible before any later one's: the
    // scheduler can never see, and start, a later run ahead of an earlier one.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('pgshepherd target ' || $1))",
        &[&plan.target],
    )
    .await?;
    let mut id = None;
    // 48 random bits: a collision is unlikely but cheap to survive.
    for _ in 0..5 {
        let candidate = crate::cli::run::new_run_id();
        let inserted = tx
            .query_opt(
                "INSERT INTO runs (id, target, plan_name, plan_path, bundle, bundle_sha256,
                                   submitted_by, requires_approval, phase, checkpoint, state_name,
                                   notify, rehearsal_required)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $11, $13)
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id",
                &[
                    &candidate,
                    &plan.target,
                    &plan.name,
                    &bundle.plan.path,
                    &bundle_json,
                    &sha,
                    &caller.name,
                    &requires_approval,
                    &phase,
                    &checkpoint,
                    &notify,
                    &state_name,
                    &rehearsal_required,
                ],
            )
            .await?;
        if inserted.is_some() {
            id = Some(candidate);
            break;
        }
    }
    let id = id.ok_or_else(|| ApiError::internal("could not allocate a run id"))?;
    let event = Event {
        ts: Utc::now(),
        run_id: id.clone(),
        step: None,
        kind: EventKind::RunSubmitted {
            plan_name: plan.name.clone(),
            target: plan.target.clone(),
            submitted_by: caller.name.clone(),
            bundle_sha256: sha.clone(),
            requires_approval,
            rehearsal_required,
        },
    };
    store::append_events(&tx, &id, &[event], &shared.config.notify, None).await?;
    tx.commit().await?;
    shared.wake.notify_one();
    if rehearsal_required {
        shared.rehearsal_wake.notify_one();
    }
    shared.outbox.poke();

    let view = view::load(&client, &id)
        .await?
        .ok_or_else(|| ApiError::internal(format!("run {id} vanished after it was stored")))?;
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/runs/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.extensions_mut().insert(AuditRun(id));
    response.extensions_mut().insert(AuditDetail(format!(
        "plan {} ({}) for target {}, {}, bundle {sha}",
        plan.name,
        bundle.plan.path,
        plan.target,
        phase.replace('_', " ")
    )));
    Ok(response)
}

/// Compile the bundle and check what only the daemon knows: that its target,
/// its notification channels and its escalation policy are configured.
pub fn validate(
    targets: &std::collections::BTreeMap<String, crate::pg::Dsn>,
    notify: &crate::notify::config::NotifyConfig,
    bundle: &Bundle,
) -> Result<Plan, Diagnostics> {
    let path = std::path::Path::new(&bundle.plan.path);
    let compiled = bundle.compile();
    let names = bundle.names();
    // The compiled plan's target is the authority; the text gives its position.
    let target = match &compiled {
        Ok(plan) => Some(match names.target {
            Some((_, line, column)) => (plan.target.clone(), line, column),
            None => (plan.target.clone(), 0, 0),
        }),
        Err(_) => names.target,
    };
    // A plan only names channels and policies; the config defines them, so a
    // submitted plan can never send data to an address of its own choosing.
    let notify_channels: Vec<&String> = notify.channels.keys().collect();
    let policies: Vec<&String> = notify.policies.keys().collect();
    let target_names: Vec<&String> = targets.keys().collect();
    let checks = target
        .into_iter()
        .map(|t| ("target", t, &target_names))
        .chain(
            names
                .channels
                .into_iter()
                .map(|c| ("channel", c, &notify_channels)),
        )
        .chain(
            names
                .escalation
                .into_iter()
                .map(|e| ("escalation policy", e, &policies)),
        );
    let mut unknown = Vec::new();
    for (what, (name, line, column), known) in checks {
        if !known.contains(&&name) {
            let defined = if known.is_empty() {
                "none".to_string()
            } else {
                known
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            unknown.push(Diagnostic::new(
                path,
                line,
                column,
                format!("unknown {what} `{name}`: this daemon's config defines {defined}"),
            ));
        }
    }
    match (compiled, unknown.is_empty()) {
        (Ok(plan), true) => Ok(plan),
        (Ok(_), false) => Err(Diagnostics(bundle::sorted(path, unknown))),
        (Err(Diagnostics(mut all)), _) => {
            all.extend(unknown);
            Err(Diagnostics(bundle::sorted(path, all)))
        }
    }
}
