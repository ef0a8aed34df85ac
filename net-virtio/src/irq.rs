//! How the device interrupts the guest: a callback, or eventfds a VMM registers as KVM irqfds.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What an interrupt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqCause {
    /// The used ring of this queue (transport index) has new entries.
    Queue(u16),
    /// The configuration space changed (link status, announce request, `NEEDS_RESET`).
    Config,
}

/// Raises interrupts for the device. With MSI-X, one vector per queue and one for the
/// configuration; with INTx, the transport sets its ISR bit from the cause and raises its line.
pub trait Interrupt: Send {
    /// Raises the interrupt for `cause`.
    fn trigger(&self, cause: IrqCause) -> io::Result<()>;
}

impl<F: Fn(IrqCause) -> io::Result<()> + Send> Interrupt for F {
    fn trigger(&self, cause: IrqCause) -> io::Result<()> {
        self(cause)
    }
}

/// One eventfd per queue and one for the configuration, to register with KVM
/// (`VmFd::register_irqfd(fd, gsi)`), so an interrupt is one `write(2)` and no VM exit.
#[derive(Debug)]
pub struct EventFdInterrupts {
    queues: Vec<EventFd>,
    config: EventFd,
}

impl EventFdInterrupts {
    /// Eventfds for `queues` queues (transport indices `0..queues`) and the configuration.
    pub fn new(queues: u16) -> io::Result<EventFdInterrupts> {
        Ok(EventFdInterrupts {
            queues: (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<io::Result<_>>()?,
            config: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The eventfd of a queue's interrupt.
    pub fn queue(&self, index: u16) -> Option<&EventFd> {
        self.queues.get(usize::from(index))
    }

    /// The eventfd of the configuration interrupt.
    pub fn config(&self) -> &EventFd {
        &self.config
    }
}

impl Interrupt for EventFdInterrupts {
    fn trigger(&self, cause: IrqCause) -> io::Result<()> {
        let fd = match cause {
            IrqCause::Queue(i) => self.queue(i).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no queue {i}"))
            })?,
            IrqCause::Config => &self.config,
        };
        fd.write(1)
    }
}

/// An eventfd as a `BorrowedFd` (vmm-sys-util's `EventFd` has no `AsFd`).
#[allow(unsafe_code)]
pub(crate) fn borrow_eventfd(e: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the EventFd owns the fd and outlives the returned borrow, which is tied to it.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}
