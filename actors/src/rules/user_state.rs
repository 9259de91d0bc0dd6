//! What each user state allows.

use crate::protocol::{KResult, KaiwaError};
use crate::store::UserState;

/// Suspended and deleted users may not connect; pending ones may (their first login is how
/// an invitation is taken up).
pub fn can_connect(state: UserState) -> KResult<()> {
    match state {
        UserState::Active | UserState::Pending => Ok(()),
        UserState::Suspended => Err(KaiwaError::forbidden("user is suspended")),
        UserState::Deleted => Err(KaiwaError::forbidden("user is deleted")),
    }
}

/// Suspended and deleted users cannot be added to conversations or chatted with.
pub fn can_join(state: UserState) -> KResult<()> {
    match state {
        UserState::Active | UserState::Pending => Ok(()),
        _ => Err(KaiwaError::forbidden("user is not active")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspended_and_deleted_users_are_kept_out() {
        assert!(can_connect(UserState::Active).is_ok());
        assert!(can_connect(UserState::Pending).is_ok());
        assert!(can_connect(UserState::Suspended).is_err());
        assert!(can_join(UserState::Deleted).is_err());
    }
}
