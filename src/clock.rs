//! Where the layer reads the time: expiry, rate limits and quota windows all ask a [`Clock`], so
//! tests can move time by hand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::{clock::Clock, ApiKeyLayer, MemoryStore};
///
/// /// The system's clock, corrected for a host known to run a little fast.
/// struct Corrected(Duration);
///
/// impl Clock for Corrected {
///     fn now(&self) -> SystemTime {
///         SystemTime::now() - self.0
///     }
/// }
///
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .clock(Corrected(Duration::from_millis(250)))
///     .build()?;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's clock, to the nanosecond: [`SystemTime::now`].
///
/// ```
/// use tower_api_key::{clock::Clock, clock::SystemClock};
///
/// let before = std::time::SystemTime::now();
/// assert!(SystemClock.now() >= before);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The system's clock as the kernel last ticked it: the layer's default.
///
/// On Linux it reads `CLOCK_REALTIME_COARSE`, the wall clock the kernel updates at each tick
/// (every 1 to 10 ms, 4 ms on most distributions' kernels), in about 5 ns, where the precise
/// clock ([`SystemClock`]) takes about 23 ns on the machine of `BENCHMARKS.md`. It follows the
/// system's clock as the precise one does (NTP's adjustments, a clock set by hand), and is at most
/// one tick behind it. Expiry, quota windows and usage's minutes are all far coarser than a
/// tick. A rate limit of more than a request per tick sees the requests of one tick as
/// simultaneous: its burst takes them, and over time it admits its rate. Elsewhere than Linux it
/// is the precise clock.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::{clock::Clock, clock::CoarseClock};
///
/// let before = SystemTime::now();
/// let now = CoarseClock.now();
/// assert!(now <= SystemTime::now());
/// assert!(now + Duration::from_millis(100) >= before);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseClock;

impl Clock for CoarseClock {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn now(&self) -> SystemTime {
        use rustix::time::{clock_gettime, ClockId};
        let at = clock_gettime(ClockId::RealtimeCoarse);
        // Before 1970, or past what `SystemTime` holds: the precise clock says what it can.
        u64::try_from(at.tv_sec)
            .ok()
            .zip(u32::try_from(at.tv_nsec).ok())
            .and_then(|(secs, nanos)| UNIX_EPOCH.checked_add(Duration::new(secs, nanos)))
            .unwrap_or_else(SystemTime::now)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to, for tests. Clones share the same time.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_api_key::{clock::Clock, clock::ManualClock};
///
/// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_700_000_090));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `at`.
    ///
    /// # Panics
    /// If `at` is before 1970 or after the year 2554 (nanoseconds since 1970 in a `u64`).
    pub fn new(at: SystemTime) -> Self {
        let clock = ManualClock {
            nanos: Arc::new(AtomicU64::new(0)),
        };
        clock.set(at);
        clock
    }

    /// Moves the clock to `at`.
    ///
    /// # Panics
    /// As [`ManualClock::new`].
    pub fn set(&self, at: SystemTime) {
        let nanos = at
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_nanos()).ok())
            .expect("ManualClock holds times from 1970 to 2554");
        self.nanos.store(nanos, Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

/// The time the manager and the console judge keys by (their ends, their states, their credits'
/// periods): the layer's default clock, [`CoarseClock`]. A key's end the manager writes (a
/// rotated key's, with no grace) is then never after the time a later request reads, as it could
/// be were the two clocks apart. When keys were created or revoked, and the audit trail, keep
/// the precise time (`SystemTime::now`): keys created in one tick stay in order.
pub(crate) fn now() -> SystemTime {
    CoarseClock.now()
}

/// The last second of the year 9999 (Unix seconds): the latest time a key record holds
/// (public as `manage::MAX_UNIX_SECONDS`).
pub(crate) const LATEST_UNIX_SECONDS: u64 = 253_402_300_799;

/// Seconds since 1970 (0 before it): how every store of this crate writes a time, and how a
/// store of your own may.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_api_key::clock::{from_unix_seconds, unix_seconds};
///
/// let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// assert_eq!(unix_seconds(at), 1_800_000_000);
/// assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(1)), 0);
/// assert_eq!(from_unix_seconds(1_800_000_000), Some(at));
/// assert_eq!(from_unix_seconds(u64::MAX), None);
/// ```
#[must_use]
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time `secs` seconds after 1970, or `None` past what this platform's clock holds: how every
/// store reads a time back (a corrupt record is an error, never a panic).
///
/// ```
/// use tower_api_key::clock::from_unix_seconds;
///
/// let stored: u64 = 1_800_000_000; // as read from a row
/// let at = from_unix_seconds(stored).ok_or("a corrupt time")?;
/// assert!(at > std::time::UNIX_EPOCH);
/// # Ok::<(), &str>(())
/// ```
#[must_use]
pub fn from_unix_seconds(secs: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}
