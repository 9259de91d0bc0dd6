//! Membership rules: who may read, write and manage a conversation.

use crate::protocol::{KResult, KaiwaError, Role};

/// Reading, syncing and sending need membership.
pub fn require_member(role: Option<Role>) -> KResult<Role> {
    role.ok_or_else(|| KaiwaError::forbidden("not a member of this conversation"))
}

/// Adding members needs an admin (owners are admins).
pub fn require_admin(role: Option<Role>) -> KResult<()> {
    match role {
        Some(r) if r.is_admin() => Ok(()),
        Some(_) => Err(KaiwaError::forbidden("only group admins may do this")),
        None => Err(KaiwaError::forbidden("not a member of this conversation")),
    }
}

/// Removing `target`: anyone may leave, admins may remove others, nobody removes the owner.
pub fn can_remove(
    caller: &str,
    caller_role: Option<Role>,
    target: &str,
    target_role: Option<Role>,
) -> KResult<()> {
    let target_role = target_role.ok_or_else(|| KaiwaError::not_found("user is not a member"))?;
    if target_role == Role::Owner {
        return Err(KaiwaError::forbidden("the owner cannot be removed"));
    }
    if caller == target {
        return require_member(caller_role).map(|_| ());
    }
    require_admin(caller_role)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn only_admins_manage_and_the_owner_stays() {
        assert_eq!(
            require_admin(Some(Role::Member)).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert!(require_admin(Some(Role::Owner)).is_ok());
        assert!(can_remove("a", Some(Role::Member), "a", Some(Role::Member)).is_ok());
        assert!(can_remove("a", Some(Role::Member), "b", Some(Role::Member)).is_err());
        assert!(can_remove("a", Some(Role::Admin), "b", Some(Role::Member)).is_ok());
        assert!(can_remove("a", Some(Role::Owner), "o", Some(Role::Owner)).is_err());
        assert_eq!(
            can_remove("a", Some(Role::Owner), "x", None)
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
    }
}
