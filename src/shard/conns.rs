//! The shard's connections, by slot: every [`ConnHandle`] the shard holds, from its upgrade to
//! its close, and the ids that name them.
//!
//! A [`ConnId`] is a slot and a sequence number, so an id kept after its connection closed
//! (a waiter, a batched entry, an answer on its way back from the ingest core) never finds the
//! connection that reuses the slot: [`Conns::get`] checks both. This module knows nothing of
//! subscriptions or fan-out; it only keeps the slab.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use slab::Slab;

use super::conn::ConnHandle;
use crate::msg::ConnId;

/// The connection slab.
#[derive(Default)]
pub struct Conns {
    slab: RefCell<Slab<Rc<ConnHandle>>>,
    /// The sequence number of the next connection: its `conn_id` on the wire.
    next_seq: Cell<u32>,
}

impl Conns {
    /// Takes a free slot and the next sequence number for a new connection, and keeps the
    /// handle `make` builds for that id.
    pub fn insert(&self, make: impl FnOnce(ConnId) -> Rc<ConnHandle>) -> Rc<ConnHandle> {
        let seq = self.next_seq.get();
        self.next_seq.set(seq.wrapping_add(1));
        let mut slab = self.slab.borrow_mut();
        let entry = slab.vacant_entry();
        let id = ConnId {
            slot: u32::try_from(entry.key()).expect("connections_per_shard_max fits in u32"),
            seq,
        };
        let handle = make(id);
        entry.insert(handle.clone());
        handle
    }

    /// Forgets a closed connection's slot.
    pub fn remove(&self, handle: &ConnHandle) {
        let removed = self.slab.borrow_mut().remove(handle.id.slot as usize);
        assert_eq!(
            removed.id, handle.id,
            "a slot holds the connection that owns it"
        );
    }

    /// The connection `id` names, if it is still open.
    pub fn get(&self, id: ConnId) -> Option<Rc<ConnHandle>> {
        let slab = self.slab.borrow();
        let handle = slab.get(id.slot as usize)?;
        (handle.id == id).then(|| handle.clone())
    }

    pub fn len(&self) -> usize {
        self.slab.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.borrow().is_empty()
    }

    /// Calls `visit` with every connection. `visit` must not open or remove one.
    pub fn each(&self, mut visit: impl FnMut(&ConnHandle)) {
        for (_, handle) in self.slab.borrow().iter() {
            visit(handle);
        }
    }

    /// Calls `visit` with each of `ids` that is still open, in order. `visit` must not open or
    /// remove a connection.
    pub fn each_open(&self, ids: &[ConnId], mut visit: impl FnMut(&ConnHandle)) {
        let slab = self.slab.borrow();
        for id in ids {
            if let Some(handle) = slab.get(id.slot as usize).filter(|handle| handle.id == *id) {
                visit(handle);
            }
        }
    }

    /// Calls `visit` with each of `items` and the connection its `id` names, in order: the
    /// fan-out's second pass, over what its first queued. Every id must be open, and `visit`
    /// must not open or remove a connection.
    pub fn each_keyed<T>(
        &self,
        items: &[T],
        id: impl Fn(&T) -> ConnId,
        mut visit: impl FnMut(&T, &ConnHandle),
    ) {
        let slab = self.slab.borrow();
        for item in items {
            let id = id(item);
            let handle = &slab[id.slot as usize];
            assert_eq!(handle.id, id, "the fan-out's first pass found it open");
            visit(item, handle);
        }
    }

    /// Calls `visit` with each of `ids`, in order: the fan-out loop. Every id must be open,
    /// as the registry's are. `visit` must not open or remove a connection.
    #[inline]
    pub fn each_of(&self, ids: &[ConnId], mut visit: impl FnMut(&ConnHandle)) {
        let slab = self.slab.borrow();
        for id in ids {
            let handle = &slab[id.slot as usize];
            assert_eq!(handle.id, *id, "the registry holds live connections only");
            visit(handle);
        }
    }
}
