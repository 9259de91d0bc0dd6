//! The behaviour every [`Store`] backend owes the actors, as test steps that each backend's own
//! tests run (the embedded store across a reopen, the Redis store across a Redis restart).

use tokio::runtime::Runtime;

use super::*;
use crate::protocol::{Body, Message};
use crate::store::{UserRecord, UserState};

/// The runtime the steps run on (timers and I/O on, for backends that talk to a server).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A stored text message `t<seq>` of `log`.
pub fn stored(log: &str, seq: u64) -> StoredMessage {
    StoredMessage {
        msg: Message {
            conv: log.into(),
            seq,
            msg_id: format!("m{seq}"),
            from: "u".into(),
            ts: 0,
            body: Body::Text(format!("t{seq}")),
            thread: None,
            origin: None,
        },
        client_msg_id: format!("c{seq}"),
    }
}

/// An append of [`stored`]`(log, seq)`.
pub fn msg(log: &str, seq: u64) -> Write {
    Write::Append {
        log: log.into(),
        msg: stored(log, seq),
    }
}

fn conflict<T: std::fmt::Debug>(r: StoreResult<T>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

/// Appends 1..=3 to `a` and 1 to `b`; gaps and repeats are refused on the way.
pub fn append_three(s: &dyn Store, rt: &Runtime) {
    rt.block_on(s.write(vec![msg("a", 1), msg("a", 2)]))
        .unwrap();
    assert!(
        conflict(rt.block_on(s.write(vec![msg("a", 4)]))),
        "a gap is refused"
    );
    assert!(
        conflict(rt.block_on(s.write(vec![msg("a", 2)]))),
        "a repeat is refused"
    );
    rt.block_on(s.write(vec![msg("a", 3), msg("b", 1)]))
        .unwrap();
}

/// What [`append_three`] left, read back (after a reopen or restart).
pub fn read_three(s: &dyn Store, rt: &Runtime) {
    assert_eq!(rt.block_on(s.last_seq("a")).unwrap(), 3);
    assert_eq!(rt.block_on(s.last_seq("b")).unwrap(), 1);
    assert_eq!(rt.block_on(s.last_seq("none")).unwrap(), 0);
    let (page, more) = rt.block_on(s.messages("a", 1, 1)).unwrap();
    assert_eq!(page[0].msg.seq, 2);
    assert!(more);
    let (page, more) = rt.block_on(s.messages("a", 1, 10)).unwrap();
    assert_eq!(page.len(), 2);
    assert!(!more);
    let tail = rt.block_on(s.tail("a", 2)).unwrap();
    assert_eq!(tail, vec![stored("a", 2), stored("a", 3)]);
    assert!(
        conflict(rt.block_on(s.write(vec![msg("a", 3)]))),
        "the end is known after restart"
    );
}

/// A write whose append does not continue its log applies none of its writes.
pub fn all_or_nothing(s: &dyn Store, rt: &Runtime) {
    let refused = rt.block_on(s.write(vec![
        Write::PutKv {
            key: "k".into(),
            value: vec![1],
        },
        msg("x", 1),
        msg("x", 3),
    ]));
    assert!(conflict(refused));
    assert_eq!(rt.block_on(s.kv("k")).unwrap(), None);
    assert_eq!(rt.block_on(s.last_seq("x")).unwrap(), 0);
}

/// Records, members (both directions) and keyed records scanned by prefix.
pub fn records_members_and_kv(s: &dyn Store, rt: &Runtime) {
    let user = UserRecord {
        id: "u1".into(),
        name: "Ann".into(),
        email: None,
        phone: None,
        org: None,
        title: None,
        state: UserState::Active,
    };
    let member = |conv: &str, user: &str, role| Write::PutMember {
        conv: conv.into(),
        user: user.into(),
        role,
    };
    rt.block_on(s.write(vec![
        Write::PutUser(user.clone()),
        member("g", "u2", Role::Member),
        member("g", "u1", Role::Owner),
        member("g2", "u1", Role::Member),
        Write::PutKv {
            key: "link/g/c1".into(),
            value: vec![1],
        },
        Write::PutKv {
            key: "link/g2/c1".into(),
            value: vec![2],
        },
    ]))
    .unwrap();
    assert_eq!(rt.block_on(s.user("u1")).unwrap(), Some(user));
    assert_eq!(rt.block_on(s.user("u9")).unwrap(), None);
    assert_eq!(
        rt.block_on(s.members("g")).unwrap(),
        vec![("u1".into(), Role::Owner), ("u2".into(), Role::Member)]
    );
    assert_eq!(
        rt.block_on(s.user_convs("u1")).unwrap(),
        vec!["g".to_string(), "g2".to_string()]
    );
    assert_eq!(
        rt.block_on(s.kv_scan("link/g/")).unwrap(),
        vec![("link/g/c1".to_string(), vec![1])]
    );
    assert_eq!(rt.block_on(s.kv_scan("link/")).unwrap().len(), 2);
    rt.block_on(s.write(vec![
        Write::RemoveMember {
            conv: "g".into(),
            user: "u2".into(),
        },
        Write::DeleteKv {
            key: "link/g/c1".into(),
        },
    ]))
    .unwrap();
    assert_eq!(rt.block_on(s.members("g")).unwrap().len(), 1);
    assert!(rt.block_on(s.kv_scan("link/g/")).unwrap().is_empty());
    assert!(rt.block_on(s.user_convs("u2")).unwrap().is_empty());
}
