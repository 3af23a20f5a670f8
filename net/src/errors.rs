//! etcd's client-facing errors: the gRPC codes and exact messages etcd 3.4 returns
//! (etcd's api/v3rpc/rpctypes), so clients that match on them behave the same.

use detcd_core::mvcc::MvccError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Mvcc(#[from] MvccError),
    /// The state machine refused a write (its text and code decided in core).
    #[error("{0}")]
    Refused(detcd_core::server::RefusedBy),
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A write timed out after a leader change (etcd's ErrTimeoutDueToLeaderFail).
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request is too large")]
    TooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A membership change reached a member that is not the leader (whose ID this is).
    #[error("etcdserver: not leader")]
    NotLeader(u64),
    /// etcd's ErrGPRCNotSupportedForLearner: a learner serves only Status and serializable
    /// ranges (api/v3rpc/interceptor.go).
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unimplemented(&'static str),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        // A read that was running when a graceful stop closed the data file.
        let e = match e {
            ApiError::Mvcc(MvccError::Storage(redb::Error::DatabaseClosed)) => ApiError::Stopped,
            e => e,
        };
        let code = match &e {
            ApiError::Mvcc(m) => crate::errors::mvcc_code(m),
            ApiError::Refused(r) => Code::from(r.grpc_code),
            ApiError::NoLeader
            | ApiError::Timeout
            | ApiError::TimeoutDueToLeaderFail
            | ApiError::LeaderChanged
            | ApiError::Stopped => Code::Unavailable,
            ApiError::TooLarge => Code::InvalidArgument,
            // etcd's rpctypes.ErrGRPCTooManyRequests
            ApiError::TooManyRequests => Code::ResourceExhausted,
            ApiError::MemberNotFound => Code::NotFound,
            ApiError::NotLeader(_) => Code::FailedPrecondition,
            ApiError::NotSupportedForLearner => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
            ApiError::Unimplemented(_) => Code::Unimplemented,
        };
        Status::new(code, e.to_string())
    }
}

/// etcd's codes for MVCC errors (decided in core, next to the errors).
pub fn mvcc_code(e: &MvccError) -> Code {
    Code::from(e.grpc_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read cut off by a graceful stop's close of the data file is etcd's "server stopped"
    /// (Unavailable: clients retry it on another member), not an internal error.
    #[test]
    fn a_read_cut_by_the_close_is_server_stopped() {
        let closed = ApiError::Mvcc(MvccError::Storage(redb::Error::DatabaseClosed));
        let status = Status::from(closed);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "etcdserver: server stopped");
        let other = ApiError::Mvcc(MvccError::Corrupt("x".into()));
        assert_eq!(Status::from(other).code(), Code::Internal);
    }
}
