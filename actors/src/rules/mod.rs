//! Pure rules: who may do what. No I/O, so every rule is unit-tested on its own and the actors
//! stay thin about policy.

pub mod membership;
pub mod org;
pub mod user_state;
