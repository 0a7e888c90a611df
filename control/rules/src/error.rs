//! Typed refusals. Each carries a gRPC-style code and a stable reason string that the
//! gRPC layer puts into `google.rpc.ErrorInfo` (domain `earshot`), so clients branch on
//! the reason without parsing messages.

use std::fmt;

/// Reason strings. The SPEC section 2 ones are the contract; the others name the
/// NOT_FOUND / INVALID_ARGUMENT / ALREADY_EXISTS / call-verb precondition cases.
pub mod reason {
    /// Lacks the mode permission or `conversation:call:add`.
    pub const MISSING_PERMISSION: &str = "MISSING_PERMISSION";
    /// Starting from no supervision needs presence AVAILABLE.
    pub const SUPERVISOR_NOT_AVAILABLE: &str = "SUPERVISOR_NOT_AVAILABLE";
    /// The target already has a live coach.
    pub const COACH_ALREADY_ACTIVE: &str = "COACH_ALREADY_ACTIVE";
    /// Coach and barge targets must be INTERNAL.
    pub const TARGET_EXTERNAL: &str = "TARGET_EXTERNAL";
    /// Barge target is the specialist of an active consult.
    pub const TARGET_IN_CONSULT: &str = "TARGET_IN_CONSULT";
    /// Barge target's talk group has 3+ non-supervisors.
    pub const TARGET_IN_CONFERENCE: &str = "TARGET_IN_CONFERENCE";
    /// Monitor <-> coach goes through a stop.
    pub const STOP_CURRENT_FIRST: &str = "STOP_CURRENT_FIRST";
    /// Barge -> monitor or coach goes through a stop.
    pub const STOP_BARGE_FIRST: &str = "STOP_BARGE_FIRST";
    /// One live supervision per supervisor per interaction.
    pub const SUPERVISOR_ALREADY_ACTIVE: &str = "SUPERVISOR_ALREADY_ACTIVE";
    /// The supervisor has a live supervision on another interaction (whatever its
    /// pushed presence): one call at a time.
    pub const SUPERVISOR_BUSY: &str = "SUPERVISOR_BUSY";
    /// The supervisor's user is a connected non-supervisor participant of the call.
    pub const SUPERVISOR_IS_PARTICIPANT: &str = "SUPERVISOR_IS_PARTICIPANT";
    /// The target is not CONNECTED.
    pub const TARGET_NOT_CONNECTED: &str = "TARGET_NOT_CONNECTED";
    /// The interaction has ended.
    pub const INTERACTION_ENDED: &str = "INTERACTION_ENDED";

    /// A malformed id (not 1..128 chars of `[A-Za-z0-9._:-]`).
    pub const INVALID_ID: &str = "INVALID_ID";
    /// A display name longer than the limit or with control characters.
    pub const INVALID_DISPLAY_NAME: &str = "INVALID_DISPLAY_NAME";
    /// A permission string that is empty, too long or contains whitespace/control chars.
    pub const INVALID_PERMISSION: &str = "INVALID_PERMISSION";
    /// A call verb was given a participant with role SUPERVISOR.
    pub const SUPERVISOR_ROLE_RESERVED: &str = "SUPERVISOR_ROLE_RESERVED";
    /// The same participant id twice in one request.
    pub const DUPLICATE_PARTICIPANT: &str = "DUPLICATE_PARTICIPANT";
    /// `Conference` needs at least two participants.
    pub const TOO_FEW_PARTICIPANTS: &str = "TOO_FEW_PARTICIPANTS";
    /// A call verb named a supervisor leg where a call participant is needed.
    pub const PARTICIPANT_IS_SUPERVISOR: &str = "PARTICIPANT_IS_SUPERVISOR";
    /// A supervision target must be a non-supervisor participant.
    pub const TARGET_IS_SUPERVISOR: &str = "TARGET_IS_SUPERVISOR";

    /// Unknown interaction id.
    pub const INTERACTION_NOT_FOUND: &str = "INTERACTION_NOT_FOUND";
    /// Unknown participant id in the interaction.
    pub const PARTICIPANT_NOT_FOUND: &str = "PARTICIPANT_NOT_FOUND";
    /// Unknown user id.
    pub const USER_NOT_FOUND: &str = "USER_NOT_FOUND";
    /// Unknown supervision id.
    pub const SUPERVISION_NOT_FOUND: &str = "SUPERVISION_NOT_FOUND";

    /// Interaction id reused with different content.
    pub const INTERACTION_EXISTS: &str = "INTERACTION_EXISTS";
    /// Participant id reused with different content (or a supervisor leg id held by
    /// someone else).
    pub const PARTICIPANT_EXISTS: &str = "PARTICIPANT_EXISTS";
    /// Supervision id reused with different content.
    pub const SUPERVISION_EXISTS: &str = "SUPERVISION_EXISTS";

    /// A call verb named a participant that is not CONNECTED.
    pub const PARTICIPANT_NOT_CONNECTED: &str = "PARTICIPANT_NOT_CONNECTED";
    /// `StartConsult` by a held participant.
    pub const PARTICIPANT_ON_HOLD: &str = "PARTICIPANT_ON_HOLD";
    /// A second `StartConsult` while one is active.
    pub const CONSULT_ALREADY_ACTIVE: &str = "CONSULT_ALREADY_ACTIVE";
    /// `EndConsult` with no consult active (and not a retry of the last one).
    pub const NO_ACTIVE_CONSULT: &str = "NO_ACTIVE_CONSULT";
    /// A blind `Transfer` of the agent or specialist of an active consult.
    pub const CONSULT_ACTIVE: &str = "CONSULT_ACTIVE";
}

/// The most characters of any client input an error message quotes (SPEC section 2),
/// so that an error stays small enough for any client's metadata limit whatever it was
/// sent.
pub const MAX_QUOTED_CHARS: usize = 64;

/// Quotes client input in an error message: the first [`MAX_QUOTED_CHARS`] characters,
/// control characters escaped (so input cannot forge log lines), followed by the total
/// length when cut. Every earshot message that quotes input goes through here (the
/// control sidecar re-exports it).
pub fn quote(input: &str) -> String {
    let total = input.chars().count();
    let head: String = input
        .chars()
        .take(MAX_QUOTED_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if total <= MAX_QUOTED_CHARS {
        head
    } else {
        format!("{head}... ({total} chars)")
    }
}

/// The gRPC status class of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// An id names nothing.
    NotFound,
    /// A request field is malformed; `field` names it (e.g. `"target_participant_id"`).
    InvalidArgument {
        /// The offending request field.
        field: &'static str,
    },
    /// An id is taken by an object with different content.
    AlreadyExists,
    /// The rules refuse in the current state.
    FailedPrecondition,
    /// The user lacks a permission.
    PermissionDenied,
}

impl ErrorCode {
    /// The gRPC code name, e.g. `"FAILED_PRECONDITION"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::InvalidArgument { .. } => "INVALID_ARGUMENT",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
        }
    }
}

/// A refused command. The state is unchanged when `apply` returns one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The gRPC status class.
    pub code: ErrorCode,
    /// A stable reason from [`reason`].
    pub reason: &'static str,
    /// A human-readable explanation naming the ids involved.
    pub message: String,
}

impl RuleError {
    pub(crate) fn not_found(reason: &'static str, message: String) -> Self {
        RuleError {
            code: ErrorCode::NotFound,
            reason,
            message,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: &'static str, message: String) -> Self {
        RuleError {
            code: ErrorCode::InvalidArgument { field },
            reason,
            message,
        }
    }

    pub(crate) fn exists(reason: &'static str, message: String) -> Self {
        RuleError {
            code: ErrorCode::AlreadyExists,
            reason,
            message,
        }
    }

    pub(crate) fn precondition(reason: &'static str, message: String) -> Self {
        RuleError {
            code: ErrorCode::FailedPrecondition,
            reason,
            message,
        }
    }

    pub(crate) fn denied(message: String) -> Self {
        RuleError {
            code: ErrorCode::PermissionDenied,
            reason: reason::MISSING_PERMISSION,
            message,
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            ErrorCode::InvalidArgument { field } => write!(
                f,
                "{} ({}, field {}): {}",
                self.code.as_str(),
                self.reason,
                field,
                self.message
            ),
            _ => write!(
                f,
                "{} ({}): {}",
                self.code.as_str(),
                self.reason,
                self.message
            ),
        }
    }
}

impl std::error::Error for RuleError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_short_input_and_cuts_long_input_to_64_characters() {
        assert_eq!(quote("call-1"), "call-1");
        assert_eq!(quote("a\nb"), "a\\nb", "control characters are escaped");
        let long = "x".repeat(100_000);
        let q = quote(&long);
        assert!(q.starts_with(&"x".repeat(64)) && !q.starts_with(&"x".repeat(65)));
        assert!(q.ends_with("(100000 chars)"), "{q}");
        assert!(q.len() < 100);
    }
}
