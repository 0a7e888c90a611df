//! API errors and the one mapping to `tonic::Status` (STYLE.md rule 13).
//!
//! Every refusal leaves the server as a status whose details carry a
//! `google.rpc.ErrorInfo` with domain `earshot` and a stable reason string; an
//! INVALID_ARGUMENT also names the field, both in the ErrorInfo metadata (`field`) and
//! as a `google.rpc.BadRequest` field violation.

use std::collections::HashMap;

use earshot_engine_api::EngineError;
use earshot_rules::{ErrorCode, RuleError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every earshot error.
pub const ERROR_DOMAIN: &str = "earshot";

/// Reason strings the server adds to those of `earshot_rules::reason`.
pub mod reason {
    /// A request field is malformed (address, codec, ptime, enum, length).
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    /// A required field is missing.
    pub const MISSING_FIELD: &str = "MISSING_FIELD";
    /// A retry of a create named the same participant with different media.
    pub const MEDIA_MISMATCH: &str = "MEDIA_MISMATCH";
    /// `WatchEvents` asked to resume before the oldest retained event.
    pub const EVENTS_EXPIRED: &str = "EVENTS_EXPIRED";
    /// The engine is unreachable or restarting.
    pub const ENGINE_UNAVAILABLE: &str = "ENGINE_UNAVAILABLE";
    /// The engine has no free port, leg or session slot.
    pub const ENGINE_EXHAUSTED: &str = "ENGINE_EXHAUSTED";
    /// The engine refused a field of a leg's configuration.
    pub const ENGINE_INVALID_ARGUMENT: &str = "ENGINE_INVALID_ARGUMENT";
    /// The engine lost a leg or session the sidecar expected.
    pub const ENGINE_NOT_FOUND: &str = "ENGINE_NOT_FOUND";
    /// The engine failed (could not open a port, ...).
    pub const ENGINE_INTERNAL: &str = "ENGINE_INTERNAL";
    /// The embedded database failed; the change was not acknowledged.
    pub const STORE_FAILED: &str = "STORE_FAILED";
    /// A cluster RPC (DrainNode) on a control plane with one engine.
    pub const NOT_A_CLUSTER: &str = "NOT_A_CLUSTER";
    /// No live engine node has this id.
    pub const NODE_NOT_FOUND: &str = "NODE_NOT_FOUND";
    /// Other control replicas kept committing first; nothing was acknowledged (retry).
    pub const STORE_CONFLICT: &str = "STORE_CONFLICT";
    /// The store (etcd) is unreachable; nothing was acknowledged.
    pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
    /// The caller lacks `analytics:interaction:view` for a listing on a user's behalf.
    pub const MISSING_PERMISSION: &str = "MISSING_PERMISSION";
    /// The change would give an interaction more legs than the engine mixes
    /// (`MAX_SESSION_LEGS`).
    pub const TOO_MANY_LEGS: &str = "TOO_MANY_LEGS";
    /// The engine holds legs of another control store; this sidecar does not touch
    /// them (see `--adopt-engine-state` in docs/operations.md).
    pub const ENGINE_NOT_OURS: &str = "ENGINE_NOT_OURS";
}

/// The one helper that quotes client input in error messages (at most 64 characters;
/// SPEC section 2), shared with the rules.
pub use earshot_rules::{MAX_QUOTED_CHARS, quote};

/// A refused or failed request, ready to become a `tonic::Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// gRPC status code.
    pub code: Code,
    /// Stable reason for `google.rpc.ErrorInfo`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The offending request field, for INVALID_ARGUMENT.
    pub field: Option<String>,
}

impl ApiError {
    /// A malformed field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            code: Code::InvalidArgument,
            reason: reason::INVALID_FIELD,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// A required field that is absent.
    pub fn missing(field: impl Into<String>) -> ApiError {
        let field = field.into();
        ApiError {
            code: Code::InvalidArgument,
            reason: reason::MISSING_FIELD,
            message: format!("{field} is required"),
            field: Some(field),
        }
    }

    /// Any other code with a reason.
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            field: None,
        }
    }

    /// The store failed: nothing was acknowledged. An unreachable etcd is UNAVAILABLE
    /// (retry elsewhere or later), a lost race ABORTED, anything else INTERNAL.
    pub fn store(err: impl std::fmt::Display + std::any::Any) -> ApiError {
        use crate::store::StoreError;
        let any: &dyn std::any::Any = &err;
        let (code, why) = match any.downcast_ref::<StoreError>() {
            Some(StoreError::Etcd(earshot_etcd::EtcdError::Unavailable(_))) => {
                (Code::Unavailable, reason::STORE_UNAVAILABLE)
            }
            Some(
                StoreError::Conflict { .. } | StoreError::Behind { .. } | StoreError::Locked(_),
            ) => (Code::Aborted, reason::STORE_CONFLICT),
            _ => (Code::Internal, reason::STORE_FAILED),
        };
        ApiError::new(code, why, format!("store: {err}"))
    }

    /// The single mapping of every earshot error to a gRPC status.
    pub fn into_status(self) -> Status {
        let mut metadata = HashMap::new();
        if let Some(field) = &self.field {
            metadata.insert("field".to_owned(), field.clone());
        }
        let mut details = ErrorDetails::with_error_info(self.reason, ERROR_DOMAIN, metadata);
        if let Some(field) = &self.field {
            details.add_bad_request_violation(field.clone(), self.message.clone());
        }
        Status::with_error_details(self.code, self.message, details)
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> ApiError {
        let (code, field) = match e.code {
            ErrorCode::NotFound => (Code::NotFound, None),
            ErrorCode::InvalidArgument { field } => (Code::InvalidArgument, Some(field.to_owned())),
            ErrorCode::AlreadyExists => (Code::AlreadyExists, None),
            ErrorCode::FailedPrecondition => (Code::FailedPrecondition, None),
            ErrorCode::PermissionDenied => (Code::PermissionDenied, None),
        };
        ApiError {
            code,
            reason: e.reason,
            message: e.message,
            field,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let message = e.to_string();
        match e {
            EngineError::InvalidArgument { field, .. } => ApiError {
                code: Code::InvalidArgument,
                reason: reason::ENGINE_INVALID_ARGUMENT,
                message,
                field: Some(field),
            },
            EngineError::NotFound(_) => {
                ApiError::new(Code::Internal, reason::ENGINE_NOT_FOUND, message)
            }
            EngineError::ResourceExhausted(_) => {
                ApiError::new(Code::ResourceExhausted, reason::ENGINE_EXHAUSTED, message)
            }
            EngineError::Unavailable(_) => {
                ApiError::new(Code::Unavailable, reason::ENGINE_UNAVAILABLE, message)
            }
            EngineError::Internal(_) => {
                ApiError::new(Code::Internal, reason::ENGINE_INTERNAL, message)
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        e.into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_status_names_the_field_in_error_info_and_bad_request() {
        let status = ApiError::invalid("media.ptime_ms", "ptime 7 is not 10..60").into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.reason, reason::INVALID_FIELD);
        assert_eq!(
            info.metadata.get("field").map(String::as_str),
            Some("media.ptime_ms")
        );
        let bad = status.get_details_bad_request().expect("bad request");
        assert_eq!(bad.field_violations[0].field, "media.ptime_ms");
    }

    #[test]
    fn engine_unavailable_maps_to_unavailable_with_reason() {
        let status = ApiError::from(EngineError::Unavailable("socket closed".into())).into_status();
        assert_eq!(status.code(), Code::Unavailable);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, reason::ENGINE_UNAVAILABLE);
        assert!(status.get_details_bad_request().is_none());
    }
}
