//! Rules of hierarchical groups: which links keep the groups a forest, and what may be posted in
//! a group that has sub-groups.

use crate::protocol::error::KResult;
use crate::protocol::frames::Id;
use crate::protocol::{Body, KaiwaError};

/// Decides whether `child` may be linked under `parent`. Hierarchical groups form a forest, so a
/// link is refused with `conflict` when it would close a cycle (`child` is `parent` itself or one
/// of `ancestors_of_parent`) or when `child` already hangs under another parent. Linking a child
/// again under the parent it already has is allowed (a repeated request changes nothing).
pub fn check_link(
    parent: &str,
    child: &str,
    ancestors_of_parent: &[Id],
    child_current_parent: Option<&str>,
) -> KResult<()> {
    if child == parent {
        return Err(KaiwaError::conflict("a group cannot be its own parent"));
    }
    if ancestors_of_parent.iter().any(|a| a == child) {
        return Err(KaiwaError::conflict(
            "the child is an ancestor of the parent: the link would make a cycle",
        ));
    }
    match child_current_parent {
        Some(p) if p != parent => Err(KaiwaError::conflict("the group already has a parent")),
        _ => Ok(()),
    }
}

/// Decides whether `body` may be posted in a hierarchical group. A group with sub-groups is a
/// broadcast node: actions posted there flow down the tree, plain text would not, so text is
/// `forbidden` there. Leaf groups take anything.
pub fn can_post(body: &Body, has_children: bool) -> KResult<()> {
    if has_children && !body.is_action() {
        return Err(KaiwaError::forbidden(
            "a group with sub-groups takes only actions, not text",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::body::Announcement;
    use crate::protocol::ErrorCode;

    fn ids(v: &[&str]) -> Vec<Id> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn link_to_a_fresh_child_is_allowed() {
        assert!(check_link("p", "c", &ids(&["root"]), None).is_ok());
        assert!(check_link("p", "c", &[], None).is_ok());
    }

    #[test]
    fn relinking_under_the_same_parent_is_allowed() {
        assert!(check_link("p", "c", &[], Some("p")).is_ok());
    }

    #[test]
    fn self_link_is_a_conflict() {
        let e = check_link("g", "g", &[], None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
    }

    #[test]
    fn cycle_through_an_ancestor_is_a_conflict() {
        // root > a > p; linking root under p would close root > a > p > root.
        let e = check_link("p", "root", &ids(&["a", "root"]), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        let e = check_link("p", "a", &ids(&["a", "root"]), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
    }

    #[test]
    fn second_parent_is_a_conflict() {
        let e = check_link("p", "c", &[], Some("other")).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
    }

    #[test]
    fn text_is_forbidden_only_in_groups_with_children() {
        let text = Body::Text("hi".into());
        assert_eq!(
            can_post(&text, true).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert!(can_post(&text, false).is_ok());
        let ann = Body::Announcement(Announcement {
            text: "hello all".into(),
            likes: true,
            comments: true,
        });
        assert!(can_post(&ann, true).is_ok());
        assert!(can_post(&ann, false).is_ok());
    }
}
