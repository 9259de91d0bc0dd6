//! The wire protocol: frame types, the JSON and MessagePack codecs, and the closed list of error
//! codes. Nothing here knows about actors or sockets, so clients and tools can reuse it as is.

pub mod actions;
pub mod body;
pub mod codec;
pub mod error;
pub mod frames;

pub use body::Body;
pub use codec::{Format, OutFrame, SharedEvent};
pub use error::{ErrorCode, KResult, KaiwaError};
pub use frames::*;
