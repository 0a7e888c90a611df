//! # earshot-rules: the supervision rules as a pure state machine
//!
//! The control sidecar's brain. [`State`] holds the directory (users, permissions,
//! presence), the interactions (participants, talk groups, consult, ended flag) and the
//! supervisions (MONITOR / COACH / BARGE, CONNECTING / ACTIVE / ENDED). Every verb of the
//! gRPC API is a [`Command`]; [`State::apply`] either refuses it with a typed
//! [`RuleError`] carrying the SPEC section 2 reason string, or applies it and returns an
//! [`Outcome`]: the timeline [`Event`]s it produced and the interactions whose
//! [`HearRelation`] (who hears whom, SPEC section 1) changed.
//!
//! ## What it deliberately does not do
//! No I/O, no clock, no randomness, no threads: time comes in as `now_ms` (wall
//! milliseconds, only stamped on events and records) and every id is chosen by the
//! client. It does not store the timeline (it returns events; the store appends them
//! and assigns global sequence numbers), allocate ports, program the engine or talk
//! gRPC. It does not check `analytics:interaction:view` (reads are served by the gRPC
//! layer; the constant is exported as [`PERM_INTERACTION_VIEW`]).
//!
//! ## Contract
//! - `apply` is atomic: on `Err` the state is exactly as before.
//! - It is deterministic: the same commands at the same times give the same state,
//!   events and errors, so replaying a journal of accepted commands rebuilds the state.
//!   The whole [`State`], every [`Command`], [`Event`] and [`Outcome`] are serde types.
//! - Idempotent: an identical retry of any accepted command succeeds with
//!   `Outcome::existing == true`, no events and no change (docs/rules.md lists the exact
//!   retry rule per verb). Reusing an id with different content is `ALREADY_EXISTS`.
//! - Refusals follow one precedence order: validation (INVALID_ARGUMENT, field named)
//!   -> unknown ids (NOT_FOUND) -> identical retry (accepted) -> id taken
//!   (ALREADY_EXISTS) -> `INTERACTION_ENDED` -> role misuse (INVALID_ARGUMENT) ->
//!   permission -> the other preconditions in the order of docs/rules.md.
//!
//! ## Driving it (the gRPC server)
//! 1. Map the request to a [`Command`] and call `state.apply(now_ms, cmd)`.
//! 2. On `Err(e)`: reply with `e.code` as the status code, `e.reason` in
//!    `google.rpc.ErrorInfo` (domain `earshot`), `e.message` as the message.
//! 3. On `Ok(out)`: persist the command (or the state) and `out.events` first, then
//!    publish the events on `WatchEvents`.
//! 4. For each id in `out.hear_changed`, read [`State::hear_relation`] and program the
//!    engine (create legs listed in `legs` that it lacks, drop those it has and the
//!    relation no longer lists, load the gain matrix from `edges`).
//! 5. Read the object to return with the query named by `out.subject`
//!    ([`State::interaction`], [`State::supervision`], [`State::user`]).
//!
//! ```
//! use earshot_rules::*;
//! let mut st = State::default();
//! st.apply(0, Command::CreateInteraction {
//!     interaction_id: "call-1".into(),
//!     participants: vec![
//!         ParticipantSpec::new("c", ParticipantKind::External, Role::Customer),
//!         ParticipantSpec::new("a", ParticipantKind::Internal, Role::Agent),
//!     ],
//! }).unwrap();
//! let rel = st.hear_relation("call-1").unwrap();
//! assert!(rel.hears("c", "a") && rel.hears("a", "c"));
//! ```
#![forbid(unsafe_code)]

mod command;
mod error;
mod hear;
mod model;
mod state;

pub use command::{Actor, Command, Event, EventKind, Outcome, StartSupervision, Subject};
pub use error::{ErrorCode, MAX_QUOTED_CHARS, RuleError, quote, reason};
pub use hear::HearRelation;
pub use model::{
    Consult, ConsultEnd, EndedConsult, Interaction, PERM_BARGE, PERM_CALL_ADD, PERM_COACH,
    PERM_INTERACTION_VIEW, PERM_MONITOR, Participant, ParticipantKind, ParticipantSpec,
    ParticipantState, Presence, Role, Supervision, SupervisionMode, SupervisionState, User,
};
pub use state::{
    Checkpoint, MAX_DISPLAY_NAME_CHARS, MAX_ID_CHARS, MAX_PERMISSION_CHARS, State,
    SupervisionFilter, is_valid_id,
};
