//! Who sees whom: member lists and phone numbers, per kind of conversation. Public groups keep
//! their members private from each other; flat groups keep phone numbers with the owner.

use crate::protocol::frames::Id;
use crate::protocol::{ConvType, Role};

/// The members `caller` may see in a conversation of kind `kind`. In a public group a plain
/// member sees only the owner, the admins and themself (members do not learn of each other);
/// admins and the owner see everyone. In every other kind everyone sees every member. The order
/// of `members` is kept.
pub fn visible_members(
    kind: ConvType,
    caller: &str,
    caller_role: Role,
    members: &[(Id, Role)],
) -> Vec<(Id, Role)> {
    if kind == ConvType::Public && !caller_role.is_admin() {
        members
            .iter()
            .filter(|(user, role)| role.is_admin() || user == caller)
            .cloned()
            .collect()
    } else {
        members.to_vec()
    }
}

/// Whether a viewer with role `viewer_role` may see a member's phone number in a conversation
/// of kind `kind`. Flat and hierarchical groups show phones only to the group owner; public
/// groups never show them to plain members (the owner and admins, who read the members'
/// threads, may see them); in a 1:1 chat the other party may see it.
pub fn phone_visible(kind: ConvType, viewer_role: Role) -> bool {
    match kind {
        ConvType::Chat => true,
        ConvType::Flat | ConvType::Hierarchical => viewer_role == Role::Owner,
        ConvType::Public => viewer_role.is_admin(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<(Id, Role)> {
        vec![
            ("o".to_string(), Role::Owner),
            ("a".to_string(), Role::Admin),
            ("m1".to_string(), Role::Member),
            ("m2".to_string(), Role::Member),
        ]
    }

    #[test]
    fn public_member_sees_owner_admins_and_self() {
        let seen = visible_members(ConvType::Public, "m1", Role::Member, &members());
        assert_eq!(
            seen,
            vec![
                ("o".to_string(), Role::Owner),
                ("a".to_string(), Role::Admin),
                ("m1".to_string(), Role::Member),
            ]
        );
    }

    #[test]
    fn public_admins_and_owner_see_everyone() {
        assert_eq!(
            visible_members(ConvType::Public, "a", Role::Admin, &members()),
            members()
        );
        assert_eq!(
            visible_members(ConvType::Public, "o", Role::Owner, &members()),
            members()
        );
    }

    #[test]
    fn other_kinds_show_everyone_to_everyone() {
        for kind in [ConvType::Flat, ConvType::Hierarchical, ConvType::Chat] {
            assert_eq!(
                visible_members(kind, "m1", Role::Member, &members()),
                members()
            );
        }
    }

    #[test]
    fn flat_phones_only_to_owner() {
        assert!(phone_visible(ConvType::Flat, Role::Owner));
        assert!(!phone_visible(ConvType::Flat, Role::Admin));
        assert!(!phone_visible(ConvType::Flat, Role::Member));
        assert!(phone_visible(ConvType::Hierarchical, Role::Owner));
        assert!(!phone_visible(ConvType::Hierarchical, Role::Member));
    }

    #[test]
    fn public_phones_never_to_members() {
        assert!(!phone_visible(ConvType::Public, Role::Member));
        assert!(phone_visible(ConvType::Public, Role::Admin));
        assert!(phone_visible(ConvType::Public, Role::Owner));
    }

    #[test]
    fn chat_phones_visible() {
        assert!(phone_visible(ConvType::Chat, Role::Member));
    }
}
