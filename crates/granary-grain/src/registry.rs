//! The live activations of one grain kind, in least-recently-used order.
//!
//! Everything here runs under one mutex held for a hash look-up or two, so
//! "find or activate" is atomic: concurrent first calls for an id create
//! exactly one activation. Eviction and idle passivation both take from
//! the cold end of the same order, so neither ever scans the whole map.

use std::time::Duration;

use actix::Addr;
use lru::LruCache;

use crate::activation::GrainActor;
use crate::grain::Grain;

pub(crate) struct Entry<G: Grain> {
    pub(crate) addr: Addr<GrainActor<G>>,
    /// Tells this activation from an earlier or later one of the same id.
    pub(crate) generation: u64,
    /// Milliseconds on the runtime's coarse clock (see `runtime.rs`).
    pub(crate) last_used: u64,
}

pub(crate) struct Registry<G: Grain> {
    live: LruCache<String, Entry<G>>,
    next_generation: u64,
}

impl<G: Grain> Registry<G> {
    pub(crate) fn new() -> Self {
        Registry {
            live: LruCache::unbounded(),
            next_generation: 1,
        }
    }

    /// The live activation of `id`, marked as just used.
    pub(crate) fn touch(&mut self, id: &str, now: u64) -> Option<(Addr<GrainActor<G>>, u64)> {
        let entry = self.live.get_mut(id)?;
        entry.last_used = now;
        Some((entry.addr.clone(), entry.generation))
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
        generation: u64,
        now: u64,
    ) {
        self.live.put(
            id,
            Entry {
                addr,
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

    pub(crate) fn drain(&mut self) -> Vec<(String, Entry<G>)> {
        let mut all = Vec::with_capacity(self.live.len());
        while let Some(item) = self.live.pop_lru() {
            all.push(item);
        }
        all
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.live.iter().map(|(id, _)| id.clone()).collect()
    }
}
