//! Org ownership rules: who may open org chats, create org groups, or be added to them.

use crate::protocol::{KResult, KaiwaError};
use crate::store::{UserRecord, UserState};

use super::user_state::can_join;

/// True when the user is an active member of the org.
pub fn active_in(user: &UserRecord, org: &str) -> bool {
    user.org.as_deref() == Some(org) && user.state == UserState::Active
}

/// A 1:1 chat between `a` and `b`: both usable; inside an org, both active members of it.
pub fn check_chat(a: &UserRecord, b: &UserRecord, org: Option<&str>) -> KResult<()> {
    if a.id == b.id {
        return Err(KaiwaError::bad_frame("cannot open a chat with yourself"));
    }
    can_join(b.state)?;
    if let Some(org) = org {
        if !active_in(a, org) || !active_in(b, org) {
            return Err(KaiwaError::forbidden(
                "both users must be active members of the org",
            ));
        }
    }
    Ok(())
}

/// A user joins (or creates) a conversation owned by `org` (or a private one when `None`).
pub fn check_join(user: &UserRecord, org: Option<&str>) -> KResult<()> {
    can_join(user.state)?;
    if let Some(org) = org {
        if !active_in(user, org) {
            return Err(KaiwaError::forbidden(
                "user is not an active member of the org",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, org: Option<&str>, state: UserState) -> UserRecord {
        UserRecord {
            id: id.into(),
            name: id.into(),
            email: None,
            phone: None,
            org: org.map(Into::into),
            title: None,
            state,
        }
    }

    #[test]
    fn org_chats_need_both_active_in_the_org() {
        let a = user("a", Some("o1"), UserState::Active);
        let b = user("b", Some("o1"), UserState::Active);
        let c = user("c", Some("o2"), UserState::Active);
        let p = user("p", Some("o1"), UserState::Pending);
        assert!(check_chat(&a, &b, Some("o1")).is_ok());
        assert!(check_chat(&a, &c, Some("o1")).is_err());
        assert!(check_chat(&a, &p, Some("o1")).is_err());
        assert!(check_chat(&a, &c, None).is_ok());
        assert!(check_chat(&a, &a, None).is_err());
    }

    #[test]
    fn outsiders_cannot_join_org_groups() {
        let c = user("c", Some("o2"), UserState::Active);
        assert!(check_join(&c, Some("o1")).is_err());
        assert!(check_join(&c, None).is_ok());
        assert!(check_join(&user("d", None, UserState::Suspended), None).is_err());
    }
}
