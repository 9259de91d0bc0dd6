//! Pure rules: who may do what, what actions and hierarchical groups allow, who sees whom.
//! No I/O and no actors, so the actors stay thin and every rule is tested on its own.

#![warn(missing_docs)]

pub mod actions;
pub mod hierarchy;
pub mod membership;
pub mod org;
pub mod user_state;
pub mod visibility;
