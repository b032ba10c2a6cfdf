//! The live activations of one grain kind, in least-recently-used order.
//!
//! Everything here runs under one mutex held for a hash look-up or two, so
//! "find or activate" is atomic: concurrent first calls for an id create
//! exactly one activation. Eviction and idle passivation both take from
//! the cold end of the same order, so neither ever scans the whole map.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use lru::LruCache;
use tokio::sync::oneshot;

use crate::activation::{Dormant, GrainActor, Passivate, Published};
use crate::grain::Grain;

pub(crate) struct Entry<G: Grain> {
    /// Its actor, or what the actor left when it dozed.
    pub(crate) host: Host<G>,
    /// Its state, for reads answered without the mailbox.
    pub(crate) published: Arc<Published<G>>,
    /// Tells this activation from an earlier or later one of the same id.
    pub(crate) generation: u64,
    /// Milliseconds on the runtime's coarse clock (see `runtime.rs`).
    pub(crate) last_used: u64,
}

/// Where a live activation is: an actor with its mailbox and task, or,
/// dormant, only its published state (this entry's) and what the actor
/// needs to go on without loading, until a call that needs the mailbox
/// wakes it (see `GrainActor::doze`). Reads are answered from the
/// published state either way; the activation keeps its placement.
pub(crate) enum Host<G: Grain> {
    Awake(Addr<GrainActor<G>>),
    Dormant(Dormant),
}

/// An activation passivated while dormant: its placement is the caller's
/// to release (outside the registry's lock).
pub(crate) struct Retired {
    pub(crate) id: String,
    pub(crate) generation: u64,
}

pub(crate) struct Registry<G: Grain> {
    live: LruCache<String, Entry<G>>,
    /// Activations told to stop that may not have stopped yet: the next
    /// activation of the id waits for the signal (the sender is dropped when
    /// the old actor is), so two activations never overlap.
    stopping: HashMap<String, oneshot::Receiver<()>>,
    next_generation: u64,
}

impl<G: Grain> Registry<G> {
    pub(crate) fn new() -> Self {
        Registry {
            live: LruCache::unbounded(),
            stopping: HashMap::new(),
            next_generation: 1,
        }
    }

    /// The live activation of `id`, marked as just used.
    pub(crate) fn touch(&mut self, id: &str, now: u64) -> Option<&mut Entry<G>> {
        let entry = self.live.get_mut(id)?;
        entry.last_used = now;
        Some(entry)
    }

    /// Makes activation `generation` of `id` dormant with what its actor
    /// left (its actor then stops), unless it is no longer live (a
    /// passivation took it first): then `dormant` comes back.
    pub(crate) fn doze(
        &mut self,
        id: &str,
        generation: u64,
        dormant: Dormant,
    ) -> Result<(), Dormant> {
        // `peek_mut`: dozing is not a use.
        match self.live.peek_mut(id) {
            Some(entry)
                if entry.generation == generation && matches!(entry.host, Host::Awake(_)) =>
            {
                entry.host = Host::Dormant(dormant);
                Ok(())
            }
            _ => Err(dormant),
        }
    }

    pub(crate) fn next_generation(&mut self) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        generation
    }

    pub(crate) fn insert(
        &mut self,
        id: String,
        addr: Addr<GrainActor<G>>,
        published: Arc<Published<G>>,
        generation: u64,
        now: u64,
    ) {
        self.live.put(
            id,
            Entry {
                host: Host::Awake(addr),
                published,
                generation,
                last_used: now,
            },
        );
    }

    /// Removes `id` if it is still the activation `generation`.
    pub(crate) fn remove_if(&mut self, id: &str, generation: u64) -> Option<Entry<G>> {
        if self
            .live
            .peek(id)
            .is_some_and(|e| e.generation == generation)
        {
            self.live.pop(id)
        } else {
            None
        }
    }

    /// Takes the least recently used activation if there are at least
    /// `limit` live ones.
    pub(crate) fn pop_over(&mut self, limit: usize) -> Option<(String, Entry<G>)> {
        if self.live.len() >= limit {
            self.live.pop_lru()
        } else {
            None
        }
    }

    /// Takes the least recently used activation if it has been idle for
    /// at least `idle`.
    pub(crate) fn pop_idle(&mut self, now: u64, idle: Duration) -> Option<(String, Entry<G>)> {
        let (_, entry) = self.live.peek_lru()?;
        if u128::from(now.saturating_sub(entry.last_used)) >= idle.as_millis() {
            self.live.pop_lru()
        } else {
            None
        }
    }

    /// Retires every live activation; how many, and the dormant ones among
    /// them whose placements are the caller's to release.
    pub(crate) fn retire_all(&mut self) -> (usize, Vec<Retired>) {
        let mut count = 0;
        let mut dormant = Vec::new();
        while let Some((id, entry)) = self.live.pop_lru() {
            dormant.extend(self.retire(id, entry));
            count += 1;
        }
        (count, dormant)
    }

    /// Asks `entry`'s actor to stop after the calls already queued, and
    /// records the signal its successor must wait for. A dormant one has
    /// no actor: nothing is read from it any more, and its placement is
    /// returned for the caller to release.
    #[must_use = "a dormant activation's placement must be released"]
    pub(crate) fn retire(&mut self, id: String, entry: Entry<G>) -> Option<Retired> {
        match entry.host {
            Host::Awake(addr) => {
                let (done, stopped) = oneshot::channel();
                addr.do_send(Passivate { done: Some(done) });
                self.stopping.insert(id, stopped);
                None
            }
            Host::Dormant(_) => {
                entry.published.withdraw();
                Some(Retired {
                    id,
                    generation: entry.generation,
                })
            }
        }
    }

    /// The stop signal of the previous activation of `id`, if it may still
    /// be running.
    pub(crate) fn take_stopping(&mut self, id: &str) -> Option<oneshot::Receiver<()>> {
        self.stopping.remove(id)
    }

    /// Forgets stop signals whose actor has stopped and was not followed.
    pub(crate) fn forget_stopped(&mut self) {
        self.stopping.retain(|_, stopped| {
            matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.live.iter().map(|(id, _)| id.clone()).collect()
    }
}
