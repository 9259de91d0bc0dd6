//! Entity ids. The prefix names the kind of entity, so the directory knows which actor to
//! activate for an id without a lookup; the rest is random (or, for 1:1 chats, derived from the
//! pair so that `chat.open` finds the same chat every time).

use sha2::{Digest, Sha256};

use crate::protocol::Id;

/// Prefix of user ids.
pub const USER: &str = "u_";
/// Prefix of org ids.
pub const ORG: &str = "o_";
/// Prefix of 1:1 chat ids.
pub const CHAT: &str = "c_";
/// Prefix of group ids.
pub const GROUP: &str = "g_";

fn random(prefix: &str) -> Id {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A fresh user id.
pub fn new_user() -> Id {
    random(USER)
}

/// A fresh org id.
pub fn new_org() -> Id {
    random(ORG)
}

/// A fresh group id.
pub fn new_group() -> Id {
    random(GROUP)
}

/// The id of the message with `seq` in its log: the seq (so a message is found from its id
/// without an index) and a random part (so ids cannot be guessed across conversations).
pub fn new_msg(seq: u64) -> Id {
    format!("m{seq}_{:016x}", rand::random::<u64>())
}

/// The seq a message id was made with.
pub fn seq_of_msg(msg_id: &str) -> Option<u64> {
    msg_id.strip_prefix('m')?.split_once('_')?.0.parse().ok()
}

/// The id of the one 1:1 chat of two users, private (`org` = None) or inside an org. The same
/// for either order of the pair.
pub fn chat(a: &str, b: &str, org: Option<&str>) -> Id {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    h.update(x.as_bytes());
    h.update([0]);
    h.update(y.as_bytes());
    h.update([0]);
    h.update(org.unwrap_or("").as_bytes());
    let d = h.finalize();
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{CHAT}{hex}")
}

/// The key of a public group's announcement (the `msg_id` of its ack and the `origin` of its
/// copies): derived from the sender's `client_msg_id`, so a retry names the same announcement.
pub fn announcement(conv: &str, from: &str, client_msg_id: &str) -> Id {
    let mut h = Sha256::new();
    for part in [conv, from, client_msg_id] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("m0_{hex}")
}

/// Milliseconds since the Unix epoch, the unit of every `ts` and deadline.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn message_ids_carry_their_seq() {
        assert_eq!(super::seq_of_msg(&super::new_msg(42)), Some(42));
        assert_eq!(super::seq_of_msg("x42_1"), None);
        assert_eq!(super::seq_of_msg("m_1"), None);
    }

    #[test]
    fn chat_ids_ignore_order_but_not_org() {
        assert_eq!(
            super::chat("u_a", "u_b", None),
            super::chat("u_b", "u_a", None)
        );
        assert_ne!(
            super::chat("u_a", "u_b", None),
            super::chat("u_a", "u_b", Some("o_1"))
        );
    }
}
