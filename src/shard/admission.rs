//! The shard's side of the connection limits the ingest core keeps
//! ([`crate::ingest::admission`]): upgrades waiting for a verdict, and the places of the
//! connections it admitted.
//!
//! An upgrade asks with a ticket (one cross-core round trip, [`ShardCore::admit`]) and waits;
//! the verdict comes back through the ingest core's queue. An admitted connection holds its
//! [`Place`] for its life, and dropping the place gives it back. This module never decides a
//! verdict: only the ingest core sees every shard's connections.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use futures_channel::oneshot;
use hashbrown::HashMap;

use super::forward::Forwarder;
use super::ShardCore;
use crate::msg::{ConnId, Peer, Refused, ToIngest};

/// An upgrade waiting for admission: where its verdict goes, and who it is.
type Admitting = (oneshot::Sender<Result<(), Refused>>, Peer);

/// Upgrades waiting for their verdict, and the places held by admitted connections.
#[derive(Default)]
pub struct Admission {
    /// Upgrades waiting for the ingest core's admission, by ticket; at most one per
    /// handshaking connection.
    admissions: RefCell<HashMap<u64, Admitting>>,
    /// The ticket the next upgrade asks with.
    next_ticket: Cell<u64>,
    /// The places of the connections admitted by the ingest core, given back on removal.
    /// Kept here, not in each handle, so connections no limit applies to pay nothing.
    places: RefCell<HashMap<ConnId, Place>>,
}

/// A connection's place under the limits the ingest core keeps ([`crate::ingest::admission`]),
/// held for the connection's life: dropping it gives the place back.
pub struct Place {
    shard: Weak<ShardCore>,
    peer: Option<Peer>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let (Some(shard), Some(peer)) = (self.shard.upgrade(), self.peer.take()) {
            shard.forwarder.send(ToIngest::Leave(peer));
        }
    }
}

impl Admission {
    /// Files an upgrade of `peer` as waiting for its verdict, which goes to `done`; returns
    /// the ticket to ask with.
    fn file(&self, done: oneshot::Sender<Result<(), Refused>>, peer: Peer) -> u64 {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.admissions.borrow_mut().insert(ticket, (done, peer));
        ticket
    }

    /// The ingest core's verdict on ticket `ticket`. A place granted to an upgrade that gave
    /// up waiting (its handshake timed out, its peer left) is given back at once.
    pub fn admitted(&self, ticket: u64, verdict: Result<(), Refused>, forwarder: &Forwarder) {
        let Some((done, peer)) = self.admissions.borrow_mut().remove(&ticket) else {
            return;
        };
        if done.send(verdict).is_err() && verdict.is_ok() {
            forwarder.send(ToIngest::Leave(peer));
        }
    }

    /// Holds connection `conn`'s place until [`Admission::give_back`].
    pub fn hold(&self, conn: ConnId, place: Place) {
        self.places.borrow_mut().insert(conn, place);
    }

    /// Gives back the place of a connection that closed, if it holds one.
    pub fn give_back(&self, conn: ConnId) {
        self.places.borrow_mut().remove(&conn);
    }
}

impl ShardCore {
    /// Asks the ingest core for a place for `peer` under the connection limits; the upgrade
    /// waits for the answer (one cross-core round trip) before it is answered.
    pub async fn admit(self: &Rc<Self>, peer: Peer) -> Result<Place, Refused> {
        let (done, verdict) = oneshot::channel();
        let ticket = self.admission.file(done, peer.clone());
        self.forwarder.send(ToIngest::Admit {
            shard: self.id,
            ticket,
            peer: peer.clone(),
        });
        match verdict.await {
            Ok(Ok(())) => Ok(Place {
                shard: Rc::downgrade(self),
                peer: Some(peer),
            }),
            Ok(Err(refused)) => Err(refused),
            Err(oneshot::Canceled) => Err(Refused::Stopping),
        }
    }
}
