//! Error codes: a closed, documented list. Every failure a client can see maps to one of them.

use serde::{Deserialize, Serialize};

/// The error codes of the protocol (`docs/PROTOCOL.md`, "Errors"). Clients switch on these, so
/// the list only grows, and only with a documented meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be parsed, or a field is missing or has the wrong shape.
    BadFrame,
    /// The frame parsed but names an operation the server does not know.
    UnknownOp,
    /// No valid credentials.
    Unauthorized,
    /// The caller may not do this (not a member, not an admin, wrong group kind).
    Forbidden,
    /// The target does not exist.
    NotFound,
    /// The frame or a field is larger than the configured limit.
    TooLarge,
    /// The caller sends faster than the configured rate.
    RateLimited,
    /// An organisation policy forbids this.
    PolicyDenied,
    /// The request conflicts with the current state (deadline passed, cycle, duplicate).
    Conflict,
    /// The server failed; the request may be retried.
    Internal,
}

impl ErrorCode {
    /// The wire name, also used as the `code` label of the error metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error as it travels to a client: a code from the closed list and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct KaiwaError {
    pub code: ErrorCode,
    pub message: String,
}

impl KaiwaError {
    /// Builds an error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        KaiwaError {
            code,
            message: message.into(),
        }
    }
    pub fn bad_frame(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadFrame, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, m)
    }
    pub fn policy_denied(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::PolicyDenied, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, m)
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, m)
    }
}

/// Result type of every rule and actor operation that a client can see fail.
pub type KResult<T> = Result<T, KaiwaError>;
