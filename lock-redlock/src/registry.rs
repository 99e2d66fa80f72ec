//! The registry of acquisitions: for each key and manager token, the attempt on the wire
//! (its own token), its fan-out, and what its release needs.

use super::*;

/// Below this many remembered holds nothing is pruned.
pub(crate) const PRUNE_MIN: usize = 256;

/// One acquisition: its fan-out, and the state the release needs.
pub(crate) struct Hold {
    pub(crate) key: Vec<u8>,
    /// The token on the wire: fresh for every attempt (see the crate docs), never the
    /// manager's.
    pub(crate) token: Token,
    pub(crate) ttl: Duration,
    pub(crate) acquire: Call<Option<Acquired>>,
    /// For a granted lock, the connections of the nodes whose acquire reply came too late:
    /// their release goes out behind the acquire on the same connection, so it can never
    /// overtake it.
    pub(crate) lates: Mutex<Lates>,
    /// After this no node can still hold the key: the entry may be pruned.
    pub(crate) forget_after: Mutex<Instant>,
}

impl Hold {
    pub(crate) fn release_op(self: &Arc<Self>) -> Op<bool> {
        let h = self.clone();
        Arc::new(move |b| b.release(&h.key, &h.token))
    }
}

#[derive(Default)]
pub(crate) struct Holds {
    pub(crate) map: HashMap<(Vec<u8>, Token), Arc<Hold>>,
    pub(crate) prune_at: usize,
}

impl Holds {
    /// The wire token of the granted acquisition of `key` that `token` stands for.
    pub(crate) fn granted(&self, key: &[u8], token: &Token) -> Option<Token> {
        self.map
            .get(&(key.to_vec(), token.clone()))
            .filter(|h| h.acquire.lock().won)
            .map(|h| h.token.clone())
    }

    pub(crate) fn insert(&mut self, key: &[u8], token: &Token, hold: Arc<Hold>) {
        if self.map.len() >= self.prune_at.max(PRUNE_MIN) {
            // Guards that were forgotten (never released) leave entries behind; drop
            // those whose keys have expired on every node.
            let now = Instant::now();
            self.map.retain(|_, h| *h.forget_after.lock() > now);
            self.prune_at = self.map.len() * 2;
        }
        self.map.insert((key.to_vec(), token.clone()), hold);
    }
}
