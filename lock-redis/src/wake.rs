//! Wake-ups and hand-off between the waiters of one backend.
//!
//! One [`Wake`] is shared by a backend, its clones and its dedicated handles. It keeps,
//! per key that somebody here is interested in:
//! - a short-lived memory that the key is held (by a token of ours, or — while the
//!   subscriber is connected — by somebody else), so waiters answer contention without a
//!   round trip and do not flood the server while they poll;
//! - the queue of threads blocked in `wait_for_release`;
//! - a brief reservation for the waiter a release was handed to, so the releasing thread
//!   (or any other local thread) cannot barge in ahead of it.
//!
//! Releases are learned in two ways: directly when a thread of this process releases
//! through this backend, and from the subscriber ([`crate::subscriber`]) when anybody else
//! does (the release script publishes the key).
//!
//! The race "the key is released between a failed attempt and the wait" is closed by a
//! sequence number: every release seen here gets one, the attempt records the current
//! number before it is sent, and the wait returns at once if a release of that key was
//! seen since.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use lock_core::{Acquired, BackendError, Token};
use parking_lot::{Condvar, Mutex};

use crate::subscriber;
use crate::Connector;

/// How long the waiter a release was handed to has the key to itself before others may
/// try again. Only matters if that thread is descheduled for long.
const RESERVATION: Duration = Duration::from_millis(5);
/// How many recent releases are remembered to close the attempt-then-wait race.
const RECENT_RELEASES: usize = 256;
/// How long the subscriber stays connected after the last waiter left.
pub(crate) const IDLE_STOP: Duration = Duration::from_secs(30);
/// Sweep dead entries once the map has grown past this many keys (then twice the size).
const SWEEP_FLOOR: usize = 64;
/// Length of the random id that marks the releases this backend published itself.
pub(crate) const ORIGIN_LEN: usize = 16;

/// The wake-up state of one backend (shared by its clones and dedicated handles).
pub(crate) struct Wake {
    /// Put before the key in every release message, so the subscriber can skip the
    /// releases this backend already handled locally.
    pub(crate) origin: [u8; ORIGIN_LEN],
    pub(crate) channel: Vec<u8>,
    /// How long a key seen held is answered as contended from memory.
    cache_for: Duration,
    /// How the subscriber connects; `None` for a pool given by the caller.
    pub(crate) connector: Option<Connector>,
    /// `host:port/db`, for log messages.
    pub(crate) addr: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: HashMap<Vec<u8>, KeyState>,
    /// Number of the last release seen (local or from the subscriber).
    seq: u64,
    /// The last releases seen: (sequence number, key hash).
    recent: VecDeque<(u64, u64)>,
    sub: SubState,
    sweep_at: usize,
}

/// What the subscriber thread is doing, as the waiters see it.
#[derive(Default)]
pub(crate) struct SubState {
    running: bool,
    /// Which subscriber thread is the current one (each start gets a new number).
    generation: u64,
    /// Subscribed: every release published from now on will be heard.
    live: bool,
    /// Bumped on every change of `live`, so memories of remote holds taken under an
    /// earlier subscription are not trusted.
    epoch: u64,
    /// The subscription was lost while threads were waiting: wake them all when it is back.
    lost: bool,
    waiting: usize,
    last_interest: Option<Instant>,
}

#[derive(Default)]
struct KeyState {
    known: Option<Known>,
    /// Threads that will try to acquire when woken, in arrival order.
    acquirers: VecDeque<Arc<Slot>>,
    /// Threads that only wait for the key to be free (`wait_unlocked`): all are woken.
    watchers: Vec<Arc<Slot>>,
    reserved: Option<(ThreadId, Instant)>,
}

/// The key is held: by `holder` (one of our tokens) or, if `None`, by somebody else as
/// seen under subscription `epoch`.
struct Known {
    holder: Option<Token>,
    /// Answer from memory until then.
    until: Instant,
    /// When the hold ends at the latest (our own holds; `until` for others').
    hold_end: Instant,
    epoch: u64,
}

struct Slot {
    cv: Condvar,
    woken: AtomicBool,
    thread: ThreadId,
}

/// What [`Wake::before_acquire`] saw, for [`Wake::after_acquire`].
pub(crate) struct Attempt {
    t0: Instant,
    seq: u64,
    /// The subscription epoch if it was live when the attempt started.
    epoch: Option<u64>,
    hash: u64,
}

/// The last attempt this thread made, so its next wait can tell whether the key was
/// released in between.
#[derive(Clone, Copy)]
struct Snapshot {
    wake: usize,
    hash: u64,
    seq: u64,
}

thread_local! {
    static LAST_ATTEMPT: Cell<Option<Snapshot>> = const { Cell::new(None) };
    static THREAD_ID: ThreadId = std::thread::current().id();
}

fn this_thread() -> Option<ThreadId> {
    THREAD_ID.try_with(|id| *id).ok()
}

fn hash(key: &[u8]) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

impl Known {
    fn valid(&self, now: Instant, sub: &SubState) -> bool {
        now < self.until && (self.holder.is_some() || (sub.live && sub.epoch == self.epoch))
    }
}

impl KeyState {
    fn reserved_for(&self, now: Instant) -> Option<ThreadId> {
        self.reserved
            .and_then(|(thread, until)| (now < until).then_some(thread))
    }

    fn clear_reservation_of(&mut self, me: Option<ThreadId>) {
        if me.is_some() && self.reserved.map(|(t, _)| t) == me {
            self.reserved = None;
        }
    }

    /// The key was freed: wake every watcher and hand the key to the first acquirer.
    fn hand_off(&mut self, now: Instant) {
        for slot in self.watchers.drain(..) {
            slot.wake();
        }
        if self.reserved_for(now).is_some() {
            // That thread is about to try anyway.
            return;
        }
        self.reserved = None;
        if let Some(slot) = self.acquirers.pop_front() {
            self.reserved = Some((slot.thread, later(now, RESERVATION)));
            slot.wake();
        }
    }

    fn wake_all(&mut self) {
        for slot in self.watchers.drain(..).chain(self.acquirers.drain(..)) {
            slot.wake();
        }
    }

    fn is_dead(&self, now: Instant) -> bool {
        self.acquirers.is_empty()
            && self.watchers.is_empty()
            && self.reserved_for(now).is_none()
            && self.known.as_ref().is_none_or(|k| now >= k.until)
    }
}

impl Slot {
    fn wake(&self) {
        self.woken.store(true, Ordering::Relaxed);
        self.cv.notify_one();
    }
}

impl State {
    fn record_release(&mut self, hash: u64) {
        self.seq += 1;
        if self.recent.len() == RECENT_RELEASES {
            self.recent.pop_front();
        }
        self.recent.push_back((self.seq, hash));
    }

    /// Whether a release of the key with `hash` was seen after release number `seq`.
    fn released_since(&self, seq: u64, hash: u64) -> bool {
        if self.seq == seq {
            return false;
        }
        for &(s, h) in self.recent.iter().rev() {
            if s <= seq {
                return false;
            }
            if h == hash {
                return true;
            }
        }
        // The memory does not reach back that far: assume the worst, one extra attempt.
        true
    }

    fn tidy(&mut self, key: &[u8], now: Instant) {
        if self.keys.get(key).is_some_and(|k| k.is_dead(now)) {
            self.keys.remove(key);
        }
        if self.keys.len() > self.sweep_at.max(SWEEP_FLOOR) {
            self.keys.retain(|_, k| !k.is_dead(now));
            self.sweep_at = self.keys.len() * 2;
        }
    }
}

impl Wake {
    pub(crate) fn new(
        channel: Vec<u8>,
        cache_for: Duration,
        connector: Option<Connector>,
        addr: String,
    ) -> Self {
        let mut origin = [0u8; ORIGIN_LEN];
        origin.copy_from_slice(&Token::generate().as_bytes()[..ORIGIN_LEN]);
        Wake {
            origin,
            channel,
            cache_for,
            connector,
            addr,
            state: Mutex::new(State::default()),
        }
    }

    fn id(&self) -> usize {
        self as *const Wake as usize
    }

    /// Before an attempt: `None` if the key is known to be held by another token (or handed
    /// to another local waiter), so the attempt can be answered "contended" without a
    /// round trip; otherwise what [`after_acquire`](Wake::after_acquire) needs.
    pub(crate) fn before_acquire(&self, key: &[u8], token: &Token) -> Option<Attempt> {
        let now = Instant::now();
        let hash = hash(key);
        let me = this_thread();
        let st = self.state.lock();
        let _ = LAST_ATTEMPT.try_with(|c| {
            c.set(Some(Snapshot {
                wake: self.id(),
                hash,
                seq: st.seq,
            }))
        });
        if let Some(k) = st.keys.get(key) {
            match k.reserved_for(now) {
                Some(t) if Some(t) == me => {}
                Some(_) => return None,
                None => {
                    if k.known.as_ref().is_some_and(|known| {
                        known.valid(now, &st.sub) && known.holder.as_ref() != Some(token)
                    }) {
                        return None;
                    }
                }
            }
        }
        Some(Attempt {
            t0: now,
            seq: st.seq,
            epoch: st.sub.live.then_some(st.sub.epoch),
            hash,
        })
    }

    /// After an attempt: remember what it taught us.
    pub(crate) fn after_acquire(
        &self,
        key: &[u8],
        token: &Token,
        attempt: Attempt,
        result: &Result<Option<Acquired>, BackendError>,
    ) {
        let now = Instant::now();
        let me = this_thread();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let cache_until = later(attempt.t0, self.cache_for);
        match result {
            Ok(Some(acquired)) => {
                let hold_end = later(attempt.t0, acquired.validity);
                let known = Known {
                    holder: Some(token.clone()),
                    until: cache_until.min(hold_end),
                    hold_end,
                    epoch: 0,
                };
                let k = match st.keys.get_mut(key) {
                    Some(k) => k,
                    None => st.keys.entry(key.to_vec()).or_default(),
                };
                k.known = Some(known);
                k.clear_reservation_of(me);
            }
            Ok(None) => {
                let mut refreshed = false;
                if let Some(k) = st.keys.get_mut(key) {
                    k.clear_reservation_of(me);
                    if let Some(known) = k.known.as_mut().filter(|k| k.holder.is_some()) {
                        // One of our own holds: the server confirmed it is still there.
                        known.until = known.until.max(cache_until.min(known.hold_end));
                        refreshed = true;
                    }
                }
                let subscribed = st.sub.live && attempt.epoch == Some(st.sub.epoch);
                if !refreshed && subscribed && !st.released_since(attempt.seq, attempt.hash) {
                    // Held by somebody else; its release will be published and heard.
                    let k = match st.keys.get_mut(key) {
                        Some(k) => k,
                        None => st.keys.entry(key.to_vec()).or_default(),
                    };
                    k.known = Some(Known {
                        holder: None,
                        until: cache_until,
                        hold_end: cache_until,
                        epoch: st.sub.epoch,
                    });
                }
            }
            Err(_) => {
                if let Some(k) = st.keys.get_mut(key) {
                    if k.reserved_for(now).is_some() && k.reserved.map(|(t, _)| t) == me {
                        // The baton passes on rather than waiting for the reservation to end.
                        k.reserved = None;
                        k.hand_off(now);
                    }
                }
            }
        }
        st.tidy(key, now);
    }

    /// This backend released `key` (`token == None`: deleted it whoever held it). `freed`
    /// says whether the server actually deleted a lock, `None` if the call failed.
    pub(crate) fn released(&self, key: &[u8], token: Option<&Token>, freed: Option<bool>) {
        let now = Instant::now();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if freed == Some(true) {
            st.record_release(hash(key));
        }
        if let Some(k) = st.keys.get_mut(key) {
            let ours = k
                .known
                .as_ref()
                .is_some_and(|known| token.is_none() || known.holder.as_ref() == token);
            if ours {
                k.known = None;
            }
            if freed == Some(true) {
                k.hand_off(now);
            }
        }
        st.tidy(key, now);
    }

    /// This backend changed the TTL of `key` held by `token`; the call started at `t0`.
    pub(crate) fn extended(
        &self,
        key: &[u8],
        token: &Token,
        t0: Instant,
        result: &Result<Option<Duration>, BackendError>,
    ) {
        let now = Instant::now();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if let Some(k) = st.keys.get_mut(key) {
            if let Some(known) = k.known.as_mut() {
                if known.holder.as_ref() == Some(token) {
                    match result {
                        Ok(Some(validity)) => {
                            known.hold_end = later(t0, *validity);
                            known.until = later(t0, self.cache_for).min(known.hold_end);
                        }
                        Ok(None) => k.known = None,
                        Err(_) => {}
                    }
                }
            }
        }
        st.tidy(key, now);
    }

    /// Somebody else released `key` (heard by the subscriber).
    pub(crate) fn remote_release(&self, key: &[u8]) {
        let now = Instant::now();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        st.record_release(hash(key));
        if let Some(k) = st.keys.get_mut(key) {
            k.known = None;
            k.hand_off(now);
        }
        st.tidy(key, now);
    }

    /// Blocks for at most `timeout`, returning early when `key` is released (here, or by
    /// anybody if the subscriber is connected).
    pub(crate) fn wait(self: &Arc<Self>, key: &[u8], timeout: Duration) {
        let start = Instant::now();
        let deadline = later(start, timeout);
        let hash = hash(key);
        // A thread that just tried to acquire this key will try again when woken; anybody
        // else (`wait_unlocked`) only watches.
        let snapshot = LAST_ATTEMPT
            .try_with(|c| c.take())
            .ok()
            .flatten()
            .filter(|s| s.wake == self.id() && s.hash == hash);
        let Some(thread) = this_thread() else {
            std::thread::sleep(timeout);
            return;
        };
        let mut st = self.state.lock();
        self.ensure_subscriber(&mut st);
        if snapshot.is_some_and(|s| st.released_since(s.seq, hash)) {
            return;
        }
        let slot = Arc::new(Slot {
            cv: Condvar::new(),
            woken: AtomicBool::new(false),
            thread,
        });
        {
            let k = match st.keys.get_mut(key) {
                Some(k) => k,
                None => st.keys.entry(key.to_vec()).or_default(),
            };
            if snapshot.is_some() {
                k.acquirers.push_back(slot.clone());
            } else {
                k.watchers.push(slot.clone());
            }
        }
        st.sub.waiting += 1;
        while !slot.woken.load(Ordering::Relaxed) {
            if slot.cv.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
        if let Some(k) = st.keys.get_mut(key) {
            k.acquirers.retain(|s| !Arc::ptr_eq(s, &slot));
            k.watchers.retain(|s| !Arc::ptr_eq(s, &slot));
        }
        st.sub.waiting -= 1;
        let now = Instant::now();
        st.sub.last_interest = Some(now);
        st.tidy(key, now);
    }

    fn ensure_subscriber(self: &Arc<Self>, st: &mut State) {
        if st.sub.running || self.connector.is_none() {
            return;
        }
        let generation = st.sub.generation + 1;
        match subscriber::spawn(Arc::downgrade(self), generation) {
            Ok(()) => {
                st.sub.running = true;
                st.sub.generation = generation;
            }
            Err(e) => log::warn!(
                "redis at {}: cannot start the wake-up subscriber thread ({e}); waiters poll",
                self.addr
            ),
        }
    }

    /// The subscriber is (`true`) or is no longer (`false`) subscribed.
    pub(crate) fn set_live(&self, generation: u64, live: bool) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if st.sub.generation != generation || st.sub.live == live {
            return;
        }
        st.sub.live = live;
        st.sub.epoch += 1;
        if !live {
            st.sub.lost = true;
        } else if std::mem::take(&mut st.sub.lost) {
            // Releases published while we were away were missed: everybody tries again.
            for k in st.keys.values_mut() {
                k.wake_all();
            }
        }
    }

    /// Called by the subscriber when it has nothing to do: `true` (and the subscriber is
    /// marked stopped) if nobody has waited for [`IDLE_STOP`], so it should disconnect.
    pub(crate) fn should_stop(&self, generation: u64) -> bool {
        let mut st = self.state.lock();
        if st.sub.generation != generation {
            return true;
        }
        let idle = st.sub.waiting == 0
            && st
                .sub
                .last_interest
                .is_none_or(|t| t.elapsed() >= IDLE_STOP);
        if idle {
            st.sub.running = false;
            if st.sub.live {
                st.sub.live = false;
                st.sub.epoch += 1;
            }
            st.sub.lost = false;
        }
        idle
    }

    /// The subscriber thread of `generation` is exiting.
    pub(crate) fn subscriber_exited(&self, generation: u64) {
        let mut st = self.state.lock();
        if st.sub.generation != generation || !st.sub.running {
            return;
        }
        st.sub.running = false;
        if st.sub.live {
            st.sub.live = false;
            st.sub.epoch += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    const LONG: Duration = Duration::from_secs(10);

    fn wake(cache_for: Duration) -> Arc<Wake> {
        Arc::new(Wake::new(b"ch".to_vec(), cache_for, None, "test".into()))
    }

    fn granted(validity: Duration) -> Result<Option<Acquired>, BackendError> {
        Ok(Some(Acquired {
            fencing_token: 1,
            validity,
        }))
    }

    fn take(w: &Wake, key: &[u8], token: &Token) {
        let a = w.before_acquire(key, token).expect("not known held");
        w.after_acquire(key, token, a, &granted(LONG));
    }

    #[test]
    fn a_local_hold_is_contention_for_other_tokens_only_until_the_memory_lapses() {
        let w = wake(Duration::from_millis(30));
        let (t1, t2) = (Token::generate(), Token::generate());
        take(&w, b"k", &t1);
        assert!(w.before_acquire(b"k", &t2).is_none());
        assert!(w.before_acquire(b"k", &t1).is_some(), "the holder's retry");
        assert!(w.before_acquire(b"other", &t2).is_some());
        thread::sleep(Duration::from_millis(40));
        assert!(
            w.before_acquire(b"k", &t2).is_some(),
            "memory outlived its time"
        );
    }

    #[test]
    fn a_release_between_the_attempt_and_the_wait_is_not_missed() {
        let w = wake(LONG);
        let (t1, t2) = (Token::generate(), Token::generate());
        take(&w, b"k", &t1);
        assert!(w.before_acquire(b"k", &t2).is_none());
        w.released(b"k", Some(&t1), Some(true));
        let start = Instant::now();
        w.wait(b"k", LONG);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_release_hands_the_key_to_the_first_waiter_and_the_releaser_cannot_barge() {
        let w = wake(LONG);
        let (t1, t2, t3) = (Token::generate(), Token::generate(), Token::generate());
        take(&w, b"k", &t1);
        let (queued, is_queued) = mpsc::channel();
        let waiter = {
            let w = w.clone();
            thread::spawn(move || {
                assert!(w.before_acquire(b"k", &t2).is_none());
                queued.send(()).unwrap();
                let start = Instant::now();
                w.wait(b"k", LONG);
                let woken_after = start.elapsed();
                (woken_after, w.before_acquire(b"k", &t2).is_some())
            })
        };
        is_queued.recv().unwrap();
        thread::sleep(Duration::from_millis(50));
        w.released(b"k", Some(&t1), Some(true));
        let checked = Instant::now();
        let barged = w.before_acquire(b"k", &t3).is_some();
        if checked.elapsed() < RESERVATION {
            assert!(!barged, "another thread got in ahead of the woken waiter");
        }
        let (woken_after, allowed) = waiter.join().unwrap();
        assert!(woken_after < Duration::from_secs(1), "{woken_after:?}");
        assert!(allowed, "the woken waiter was refused its own reservation");
    }

    #[test]
    fn a_thread_that_only_watches_is_woken_and_reserves_nothing() {
        let w = wake(LONG);
        let (t1, t2) = (Token::generate(), Token::generate());
        take(&w, b"k", &t1);
        let watcher = {
            let w = w.clone();
            thread::spawn(move || {
                let start = Instant::now();
                w.wait(b"k", LONG);
                start.elapsed()
            })
        };
        thread::sleep(Duration::from_millis(50));
        w.released(b"k", Some(&t1), Some(true));
        assert!(watcher.join().unwrap() < Duration::from_secs(1));
        assert!(w.before_acquire(b"k", &t2).is_some());
    }

    #[test]
    fn releases_of_other_keys_do_not_wake_a_waiter() {
        let w = wake(LONG);
        let (t1, t2) = (Token::generate(), Token::generate());
        take(&w, b"k", &t1);
        take(&w, b"other", &t1);
        assert!(w.before_acquire(b"k", &t2).is_none());
        let waiter = {
            let w = w.clone();
            thread::spawn(move || {
                let start = Instant::now();
                w.wait(b"k", Duration::from_millis(300));
                start.elapsed()
            })
        };
        thread::sleep(Duration::from_millis(50));
        w.released(b"other", Some(&t1), Some(true));
        w.remote_release(b"third");
        assert!(waiter.join().unwrap() >= Duration::from_millis(300));
    }

    #[test]
    fn holds_of_others_are_remembered_only_while_subscribed() {
        let w = wake(LONG);
        let t = Token::generate();
        let contended = |w: &Wake| {
            let a = w.before_acquire(b"k", &t).expect("asks the server");
            w.after_acquire(b"k", &t, a, &Ok(None));
        };
        contended(&w);
        assert!(
            w.before_acquire(b"k", &t).is_some(),
            "unsubscribed: not trusted"
        );
        w.set_live(0, true);
        contended(&w);
        assert!(w.before_acquire(b"k", &t).is_none());
        w.remote_release(b"k");
        assert!(
            w.before_acquire(b"k", &t).is_some(),
            "a heard release clears it"
        );
        contended(&w);
        w.set_live(0, false);
        assert!(
            w.before_acquire(b"k", &t).is_some(),
            "a lost subscription clears it"
        );
    }

    #[test]
    fn a_failed_extension_forgets_the_hold_and_a_successful_one_keeps_it() {
        let w = wake(LONG);
        let (t1, t2) = (Token::generate(), Token::generate());
        let a = w.before_acquire(b"k", &t1).unwrap();
        w.after_acquire(b"k", &t1, a, &granted(Duration::from_millis(20)));
        w.extended(b"k", &t1, Instant::now(), &Ok(Some(LONG)));
        thread::sleep(Duration::from_millis(30));
        assert!(
            w.before_acquire(b"k", &t2).is_none(),
            "extension not remembered"
        );
        w.extended(b"k", &t1, Instant::now(), &Ok(None));
        assert!(w.before_acquire(b"k", &t2).is_some());
    }

    #[test]
    fn the_memory_of_the_last_releases_reaches_back_only_so_far() {
        let mut st = State::default();
        st.record_release(7);
        let seq = st.seq;
        assert!(!st.released_since(seq, 7));
        st.record_release(8);
        assert!(st.released_since(seq, 8));
        assert!(!st.released_since(seq, 7));
        for h in 0..RECENT_RELEASES as u64 {
            st.record_release(100 + h);
        }
        assert!(
            st.released_since(seq, 7),
            "forgotten: assume it was released"
        );
    }
}
