//! Errors of the backend contract.

use std::io;

/// A failure of a backend or a queue pair.
///
/// Would-block is not an error: `send` returns how many frames it took and `recv` returns
/// `Ok(None)`. These errors mean the call could not do its job at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on the backend's host side failed.
    #[error("{op} on {target} failed: {source}")]
    Io {
        /// What was being done (`writev`, `open /dev/net/tun`...).
        op: &'static str,
        /// The link, device or queue concerned (`tap0 queue 1`).
        target: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A queue pair index beyond what the backend has.
    #[error(
        "queue pair {index} does not exist on {backend}: it has {max} queue pair(s); \
         open 0..{max} or create the backend with more queues"
    )]
    NoSuchQueue {
        /// The backend's name.
        backend: String,
        /// The index asked for.
        index: u16,
        /// How many queue pairs it has.
        max: u16,
    },
    /// A queue pair that is open already.
    #[error("queue pair {index} of {backend} is open already; drop the open one first")]
    QueueInUse {
        /// The backend's name.
        backend: String,
        /// The index asked for.
        index: u16,
    },
    /// The other end went away (loopback peer dropped, link deleted...).
    #[error("{target} is disconnected: {why}")]
    Disconnected {
        /// The queue or link concerned.
        target: String,
        /// What happened, and what to do.
        why: String,
    },
    /// A request the backend cannot honour.
    #[error("{backend} does not support {what}: {hint}")]
    Unsupported {
        /// The backend's name.
        backend: String,
        /// What was asked for.
        what: String,
        /// What to do instead.
        hint: String,
    },
    /// A configuration value out of range.
    #[error("invalid {what}: {why}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// Why it is invalid and what would be valid.
        why: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Claims queue pair `index` of `backend` in `open` (a flag per queue pair, set while one is
/// open; the queue pair clears it when dropped): `NoSuchQueue` past the end, `QueueInUse`
/// when it is claimed already.
pub fn claim_queue<'a, F: std::borrow::Borrow<std::sync::atomic::AtomicBool>>(
    open: &'a [F],
    backend: &str,
    index: u16,
) -> Result<&'a std::sync::atomic::AtomicBool> {
    let Some(flag) = open.get(usize::from(index)).map(|f| f.borrow()) else {
        return Err(Error::NoSuchQueue {
            backend: backend.to_string(),
            index,
            max: u16::try_from(open.len()).unwrap_or(u16::MAX),
        });
    };
    if flag.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return Err(Error::QueueInUse {
            backend: backend.to_string(),
            index,
        });
    }
    Ok(flag)
}
