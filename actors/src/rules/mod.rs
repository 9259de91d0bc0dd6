//! Pure rules: what actions, hierarchical groups and member lists allow. No I/O and no actors,
//! so the actors stay thin and every rule is tested on its own.

#![warn(missing_docs)]

pub mod actions;
pub mod hierarchy;
pub mod visibility;
