//! Who may hold a connection, and for how long a stalled write may hold it.
//!
//! A listener group (the public listeners together, or the admin listener
//! alone) has an [`Admission`]: a cap per client address, checked as soon as
//! a connection is accepted so that one address (a slow reader, a half-open
//! reconnect loop) cannot take every place (a connection over its address's
//! cap is closed at once), and a cap on open connections over the group: at
//! it, each listener holds its one accepted connection until a place frees,
//! and further clients wait in the kernel's backlog. (A place is not taken
//! before `accept`: with several listeners sharing a cap, each idle accept
//! would hold a place no client uses.)
//!
//! The admin listener's group also asks its connections to prove
//! themselves ([`AtCap::EvictUnproven`]): at its cap, a newcomer closes the
//! oldest connection that has not yet been authorized (one that sent
//! nothing, or nothing complete: a token-less request is answered 401 and
//! closed anyway), so local processes holding idle connections from many
//! loopback addresses cannot keep the operator out. A connection that
//! carried an authorized request keeps its place.
//!
//! [`WriteDeadline`] closes a connection whose peer stops reading: hyper has
//! no write timeout, and a client that pipelines requests without reading
//! the answers would otherwise hold its place forever.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use super::heads::Heads;

/// What a connection arriving at a full group does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtCap {
    /// It waits for a place (the public listeners: every client is alike).
    Wait,
    /// It closes the oldest connection that has not proven itself
    /// ([`Proof::prove`]), if any, and takes its place (the admin listener:
    /// only the operator's connections matter).
    EvictUnproven,
}

/// The connection caps of one listener group.
#[derive(Debug)]
pub struct Admission {
    /// Places for open connections over the group.
    places: Arc<Semaphore>,
    /// Connections one client address may hold at once.
    per_client: usize,
    /// Open connections by client address (absent: none).
    open: Mutex<HashMap<IpAddr, usize>>,
    /// With [`AtCap::EvictUnproven`], the placed connections that have not
    /// proven themselves, by admission order (oldest first); `None` with
    /// [`AtCap::Wait`].
    unproven: Option<Mutex<BTreeMap<u64, Arc<Standing>>>>,
    /// The next connection's admission number.
    next: AtomicU64,
}

/// One placed connection's standing in an [`AtCap::EvictUnproven`] group.
#[derive(Debug)]
struct Standing {
    /// Its client's address: at that address's share, a newcomer from it
    /// closes its oldest unproven connection.
    client: IpAddr,
    /// Set once the connection carried an authorized request; read only on
    /// the connection's own task, which also runs its requests, so it cannot
    /// change while the task decides whether to close.
    proven: AtomicBool,
    /// Woken when a newcomer at the cap picks this connection to close.
    evicted: Notify,
}

/// A connection's way to prove itself (it goes into each of its requests'
/// extensions; the admin routes call [`Proof::prove`] once the token
/// matched).
#[derive(Debug, Clone)]
pub struct Proof {
    admission: Arc<Admission>,
    id: u64,
    standing: Arc<Standing>,
}

impl Proof {
    /// Marks the connection as the operator's: no newcomer closes it.
    pub fn prove(&self) {
        self.standing.proven.store(true, Ordering::Relaxed);
        self.admission.forget(self.id);
    }
}

/// A client's share, held by one of its connections; returned when dropped.
#[derive(Debug)]
pub struct Share {
    admission: Arc<Admission>,
    client: IpAddr,
}

/// A held place: an open connection, returned when dropped.
#[derive(Debug)]
pub struct Place {
    _permit: OwnedSemaphorePermit,
    _share: Share,
    /// In an [`AtCap::EvictUnproven`] group: the connection's standing,
    /// forgotten when the place is dropped.
    proof: Option<Proof>,
}

impl Place {
    /// The connection's [`Proof`], in a group that asks for one.
    pub fn proof(&self) -> Option<Proof> {
        self.proof.clone()
    }

    /// Resolves once a newcomer has picked this connection to close and it
    /// has not proven itself since; never in a group that evicts nobody.
    pub async fn evicted(&self) {
        let Some(proof) = &self.proof else {
            return std::future::pending().await;
        };
        loop {
            proof.standing.evicted.notified().await;
            if !proof.standing.proven.load(Ordering::Relaxed) {
                return;
            }
            // Proven since it was picked: it stays, and the newcomer's
            // place comes from the next unproven connection.
            proof.admission.evict_oldest_unproven(|_| true);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(proof) = &self.proof {
            proof.admission.forget(proof.id);
        }
    }
}

impl Admission {
    /// At most `total` open connections, `per_client` of them from one
    /// address; `at_cap` says what a connection arriving at `total` does.
    pub fn new(total: usize, per_client: usize, at_cap: AtCap) -> Arc<Self> {
        Arc::new(Self {
            places: Arc::new(Semaphore::new(total.max(1))),
            per_client: per_client.max(1),
            open: Mutex::new(HashMap::new()),
            unproven: (at_cap == AtCap::EvictUnproven).then(|| Mutex::new(BTreeMap::new())),
            next: AtomicU64::new(0),
        })
    }

    /// Counts a new connection from `client` against its share, unless that
    /// address already holds its cap (then the connection is to be closed).
    pub fn share(self: &Arc<Self>, client: IpAddr) -> Option<Share> {
        let mut open = self.open.lock().expect("admission lock poisoned");
        let count = open.entry(client).or_insert(0);
        if *count >= self.per_client {
            return None;
        }
        *count += 1;
        Some(Share {
            admission: self.clone(),
            client,
        })
    }

    /// Waits for a place in the group for a connection holding `share`; in
    /// an [`AtCap::EvictUnproven`] group at its cap, first asks the oldest
    /// unproven connection to close.
    pub async fn place(self: &Arc<Self>, share: Share) -> Place {
        let client = share.client;
        let permit = match self.places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.evict_oldest_unproven(|_| true);
                self.places
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the connection semaphore is never closed")
            }
        };
        let proof = self.unproven.as_ref().map(|unproven| {
            let proof = Proof {
                admission: self.clone(),
                id: self.next.fetch_add(1, Ordering::Relaxed),
                standing: Arc::new(Standing {
                    client,
                    proven: AtomicBool::new(false),
                    evicted: Notify::new(),
                }),
            };
            crate::lock(unproven).insert(proof.id, proof.standing.clone());
            proof
        });
        Place {
            _permit: permit,
            _share: share,
            proof,
        }
    }

    /// Picks the oldest unproven connection whose client `of` admits to
    /// close; returns whether there was one.
    fn evict_oldest_unproven(&self, of: impl Fn(IpAddr) -> bool) -> bool {
        let Some(unproven) = &self.unproven else {
            return false;
        };
        let mut unproven = crate::lock(unproven);
        let Some(id) = unproven
            .iter()
            .find(|(_, s)| of(s.client))
            .map(|(&id, _)| id)
        else {
            return false;
        };
        let standing = unproven.remove(&id).expect("found under the same lock");
        tracing::debug!(
            connection = id,
            client = %standing.client,
            "at a connection cap: closing the oldest connection not yet authorized"
        );
        standing.evicted.notify_one();
        true
    }

    /// [`Admission::share`]; in an [`AtCap::EvictUnproven`] group whose
    /// address `client` holds its share, first closes that address's oldest
    /// unproven connection and waits (at most a second) for its share to
    /// come back: the operator's own address filled with idle connections
    /// would otherwise refuse every connection the operator makes.
    pub async fn share_evicting(self: &Arc<Self>, client: IpAddr) -> Option<Share> {
        if let Some(share) = self.share(client) {
            return Some(share);
        }
        if !self.evict_oldest_unproven(|c| c == client) {
            return None;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if let Some(share) = self.share(client) {
                return Some(share);
            }
        }
        None
    }

    /// Removes connection `id` from those a newcomer may close.
    fn forget(&self, id: u64) {
        if let Some(unproven) = &self.unproven {
            crate::lock(unproven).remove(&id);
        }
    }

    /// Connections `client` holds now.
    pub fn held_by(&self, client: IpAddr) -> usize {
        let open = self.open.lock().expect("admission lock poisoned");
        open.get(&client).copied().unwrap_or(0)
    }

    fn release(&self, client: IpAddr) {
        let mut open = self.open.lock().expect("admission lock poisoned");
        if let Some(count) = open.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&client);
            }
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.admission.release(self.client);
    }
}

/// A stream whose writes fail with `TimedOut` once one has made no progress
/// for `limit`: the peer is not reading.
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is pending; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Told of every write's progress or wait, so that the header timeout
    /// does not close a connection whose answer is still being written.
    progress: Arc<Heads>,
}

impl<S> WriteDeadline<S> {
    /// Wraps `inner`, reporting its writes to `progress`.
    pub(crate) fn new(inner: S, limit: Duration, progress: Arc<Heads>) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
            progress,
        }
    }

    /// Tells the connection's progress of a write of answer bytes (not of
    /// a flush: hyper flushes whenever its connection is polled, so a flush
    /// is no sign of an answer being written).
    fn count(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => self.progress.wrote(true),
            Poll::Pending => self.progress.wrote(false),
            Poll::Ready(_) => {}
        }
    }

    /// Maps a write's outcome: progress disarms the timer, a pending write
    /// arms it, and an expired timer turns pending into `TimedOut`.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(&polled);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(&polled);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft limit on open files to the hard one and returns the soft
/// limit in force: every connection is a descriptor, so the connection caps
/// must fit under it.
pub fn raise_open_files() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit to the hard limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Descriptors kept back from connections: listeners, the state database,
/// compiled guests, the log, a batch timer per batching instance, with room
/// to spare.
pub const RESERVED_FILES: usize = 128;

/// The public connection cap that fits beside the admin listener's cap, the
/// listeners and [`RESERVED_FILES`] under `open_files`.
pub fn fitting_cap(wanted: usize, open_files: u64, admin: usize, listeners: usize) -> usize {
    let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
    let room = open_files.saturating_sub(RESERVED_FILES + admin + listeners);
    wanted.min(room).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[tokio::test]
    async fn one_address_cannot_take_more_than_its_share() {
        let admission = Admission::new(10, 2, AtCap::Wait);
        let a1 = placed(&admission, 2).await;
        let _a2 = placed(&admission, 2).await;
        assert!(admission.share(ip(2)).is_none());
        assert!(admission.share(ip(3)).is_some());
        drop(a1);
        assert_eq!(admission.held_by(ip(2)), 1);
        assert!(admission.share(ip(2)).is_some());
    }

    #[tokio::test]
    async fn at_the_cap_a_connection_waits_for_a_place_and_gets_the_freed_one() {
        let admission = Admission::new(1, 5, AtCap::Wait);
        let held = placed(&admission, 2).await;
        let share = admission.share(ip(3)).unwrap();
        let waiting =
            tokio::time::timeout(Duration::from_millis(200), admission.place(share)).await;
        assert!(waiting.is_err(), "no place while one is held at a cap of 1");
        assert_eq!(
            admission.held_by(ip(3)),
            0,
            "a share waiting for a place is returned"
        );
        drop(held);
        let share = admission.share(ip(3)).unwrap();
        let again = tokio::time::timeout(Duration::from_secs(1), admission.place(share)).await;
        assert!(again.is_ok(), "the place came back");
    }

    /// A connection from `127.0.0.<last>`, placed.
    async fn placed(admission: &Arc<Admission>, last: u8) -> Place {
        admission.place(admission.share(ip(last)).unwrap()).await
    }

    /// Waits until `n` placed connections are unproven and not yet picked.
    async fn until_unproven(admission: &Admission, n: usize) {
        while admission
            .unproven
            .as_ref()
            .is_some_and(|u| crate::lock(u).len() != n)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A connection of `share` waiting for its place, on a task of its own.
    fn place_later(admission: &Arc<Admission>, share: Share) -> tokio::task::JoinHandle<Place> {
        let admission = admission.clone();
        tokio::spawn(async move { admission.place(share).await })
    }

    /// Whether `place` has been picked to close, within `within`.
    async fn evicted_within(place: &Place, within: Duration) -> bool {
        tokio::time::timeout(within, place.evicted()).await.is_ok()
    }

    #[tokio::test]
    async fn at_the_admin_cap_a_newcomer_closes_the_oldest_unproven_connection() {
        let admission = Admission::new(3, 5, AtCap::EvictUnproven);
        let operator = placed(&admission, 1).await;
        let idle_old = placed(&admission, 2).await;
        let idle_new = placed(&admission, 3).await;
        operator.proof().unwrap().prove();

        // At the cap: the newcomer picks the oldest connection not proven,
        // and gets its place once that connection has closed.
        let share = admission.share(ip(4)).unwrap();
        let newcomer = place_later(&admission, share);
        assert!(evicted_within(&idle_old, Duration::from_secs(1)).await);
        assert!(!evicted_within(&idle_new, Duration::from_millis(50)).await);
        assert!(!evicted_within(&operator, Duration::from_millis(50)).await);
        drop(idle_old);
        let newcomer = tokio::time::timeout(Duration::from_secs(1), newcomer)
            .await
            .expect("the freed place goes to the newcomer")
            .unwrap();

        // The next newcomer picks the next oldest, never the proven one.
        newcomer.proof().unwrap().prove();
        let share = admission.share(ip(5)).unwrap();
        let next = place_later(&admission, share);
        assert!(evicted_within(&idle_new, Duration::from_secs(1)).await);
        drop(idle_new);
        let last = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("the place goes to the newcomer")
            .unwrap();
        last.proof().unwrap().prove();

        // Every place proven: a newcomer waits, as on the public listeners.
        let share = admission.share(ip(6)).unwrap();
        let waiting =
            tokio::time::timeout(Duration::from_millis(200), admission.place(share)).await;
        assert!(waiting.is_err(), "no proven connection is closed");
        assert!(!evicted_within(&operator, Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_connection_proven_after_it_was_picked_keeps_its_place() {
        let admission = Admission::new(1, 5, AtCap::EvictUnproven);
        let held = placed(&admission, 2).await;
        let share = admission.share(ip(3)).unwrap();
        let newcomer = place_later(&admission, share);
        // Picked, but its request was authorized before its task looked.
        until_unproven(&admission, 0).await;
        held.proof().unwrap().prove();
        assert!(!evicted_within(&held, Duration::from_millis(200)).await);
        assert!(!newcomer.is_finished(), "the newcomer waits for a place");
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), newcomer)
            .await
            .expect("and gets it when the proven one closes")
            .unwrap();
    }

    #[tokio::test]
    async fn at_its_share_an_address_closes_its_own_oldest_unproven_connection() {
        let admission = Admission::new(10, 2, AtCap::EvictUnproven);
        let other = placed(&admission, 2).await;
        let oldest = placed(&admission, 1).await;
        let newer = placed(&admission, 1).await;
        // The picked connection's task closes it when told to.
        let closing = tokio::spawn(async move {
            oldest.evicted().await;
        });
        let share = tokio::time::timeout(Duration::from_secs(2), admission.share_evicting(ip(1)))
            .await
            .unwrap();
        assert!(share.is_some(), "the address's share came back");
        closing.await.unwrap();
        assert!(!evicted_within(&newer, Duration::from_millis(50)).await);
        assert!(!evicted_within(&other, Duration::from_millis(50)).await);
        // Proven connections only: the newcomer is refused, as before.
        newer.proof().unwrap().prove();
        let _third = admission.place(share.unwrap()).await;
        _third.proof().unwrap().prove();
        assert!(admission.share_evicting(ip(1)).await.is_none());
    }

    #[tokio::test]
    async fn a_pick_declined_by_a_proven_connection_passes_to_the_next() {
        let admission = Admission::new(2, 5, AtCap::EvictUnproven);
        let first = placed(&admission, 2).await;
        let second = placed(&admission, 3).await;
        let newcomer = place_later(&admission, admission.share(ip(4)).unwrap());
        until_unproven(&admission, 1).await;
        // `first` was picked, but its request was authorized before its
        // task looked: it declines, and `second` is picked instead.
        first.proof().unwrap().prove();
        assert!(!evicted_within(&first, Duration::from_millis(100)).await);
        assert!(evicted_within(&second, Duration::from_secs(1)).await);
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), newcomer)
            .await
            .expect("the newcomer gets the place")
            .unwrap();
    }

    #[tokio::test]
    async fn the_public_listeners_close_nobody_at_the_cap() {
        let admission = Admission::new(1, 5, AtCap::Wait);
        let held = placed(&admission, 2).await;
        assert!(held.proof().is_none());
        let share = admission.share(ip(3)).unwrap();
        let waiting =
            tokio::time::timeout(Duration::from_millis(200), admission.place(share)).await;
        assert!(waiting.is_err());
        assert!(!evicted_within(&held, Duration::from_millis(50)).await);
    }

    #[test]
    fn the_cap_fits_under_the_open_file_limit() {
        assert_eq!(
            fitting_cap(1024, 1024, 64, 4),
            1024 - RESERVED_FILES - 64 - 4
        );
        assert_eq!(fitting_cap(100, 1_000_000, 64, 4), 100);
        assert_eq!(fitting_cap(100, 10, 64, 4), 1);
    }

    #[tokio::test]
    async fn a_write_that_never_progresses_times_out() {
        let (client, _server_side_unread) = tokio::io::duplex(16);
        let progress = Arc::new(Heads::default());
        let mut stream = WriteDeadline::new(client, Duration::from_millis(200), progress.clone());
        use tokio::io::AsyncWriteExt;
        let err = stream.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // The first 16 bytes went; the rest waited (the header timeout
        // leaves such a connection to this one).
        assert_eq!(progress.writes(), (1, true));
    }

    #[tokio::test]
    async fn a_slow_but_reading_peer_is_not_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 64 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                total += server.read(&mut buf).await.unwrap();
            }
            total
        });
        // Each write waits about 50 ms for the reader, well inside 2 s.
        let progress = Arc::new(Heads::default());
        let mut stream = WriteDeadline::new(client, Duration::from_secs(2), progress.clone());
        stream.write_all(&[0u8; 64]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 64);
        // Each write that went counts as progress for the header timeout.
        assert_eq!(progress.writes(), (4, false));
    }
}
