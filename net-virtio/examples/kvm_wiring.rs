//! How a VMM wires the device to KVM: the device's kick eventfds become KVM ioeventfds
//! (`register_ioevent`), its interrupt eventfds become irqfds (`register_irqfd`), and the
//! VMM's event loop polls [`NetDevice::watches`] and calls [`NetDevice::handle`].
//!
//! This builds a real VM with a real vCPU. The guest code is four instructions that notify
//! the transmit queue the way a legacy virtio-pci driver does (`out` of the queue index to the
//! notify port); KVM turns that write into an eventfd signal without leaving the kernel. The
//! virtio-net driver's ring work (descriptors, available ring) is done by the mock driver on
//! the VM's memory, standing in for a guest kernel. The frame then crosses the device into
//! a loopback backend, and the device's used-ring interrupt goes to KVM through the irqfd.
//!
//! ```text
//! cargo run -p net-virtio --features test-utils --example kvm_wiring
//! ```
//! Needs `/dev/kvm` (read-write); without it the example says so and exits 0.

// Examples are documented by this header.
#![allow(missing_docs)]

use net_api::IoBufMut;
use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit};
use net_api::loopback::{pair, LoopbackConfig};
use net_api::{Backend, QueuePair, VirtioNetHdr};
use net_virtio::features::bit;
use net_virtio::mock::MockDriver;
use net_virtio::{DeviceConfig, EventFdInterrupts, NetDevice};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// The legacy virtio-pci notify port the guest writes queue indices to.
const NOTIFY_PORT: u64 = 0x6000;
/// The first GSI of the device's interrupts (one per queue, as MSI-X vectors would be).
const GSI_BASE: u32 = 10;
const CODE_AT: u64 = 0x1000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            println!("skipped: /dev/kvm is not usable here ({e})");
            return Ok(());
        }
    };
    let vm = match kvm.create_vm() {
        Ok(vm) => vm,
        Err(e) => {
            println!("skipped: KVM refuses to create a VM here ({e})");
            return Ok(());
        }
    };
    vm.create_irq_chip()?;

    // The device over a loopback backend; its other end plays the network.
    let (host, mut net) = pair(LoopbackConfig::default())?;
    let mut peer = net.open_queue_pair(0)?;
    let (dev_cfg, queues) = (DeviceConfig::default(), 3);
    let irqs = EventFdInterrupts::new(queues)?;
    for q in 0..queues {
        let fd = irqs.queue(q).ok_or("no irq eventfd")?;
        vm.register_irqfd(fd, GSI_BASE + u32::from(q))?;
    }
    let mut dev = NetDevice::new(host, dev_cfg, irqs)?;

    // Guest memory: the mock driver's, registered with KVM slot by slot.
    let mut drv = MockDriver::new(64 << 20, dev.num_queues(), 256);
    for (slot, region) in drv.mem.iter().enumerate() {
        let host_addr = region.get_host_address(MemoryRegionAddress(0))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live mapping owned by `drv.mem`, which outlives the VM
        // (both are dropped at the end of main, the VM first).
        unsafe { vm.set_user_memory_region(r)? };
    }
    // Queue notifications: one port, the queue index as data (datamatch per queue).
    for q in 0..dev.num_queues() {
        let kick = dev.kick_fd(q).ok_or("no kick eventfd")?;
        vm.register_ioevent(kick, &IoEventAddress::Pio(NOTIFY_PORT), q)?;
    }

    // The driver side: negotiate, set up the queues, queue one frame for transmit.
    drv.start(
        &mut dev,
        bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX),
    )?;
    let mut frame = vec![0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    drv.send(1, &VirtioNetHdr::PLAIN, &frame, &[])
        .ok_or("ring full")?;

    // The vCPU notifies queue 1: mov dx, 0x6000; mov ax, 1; out dx, ax. Then it writes to
    // port 0x3f8, which nobody registered, to come back to us (with an in-kernel irqchip a
    // `hlt` would just sleep in KVM).
    let code = [
        0xba, 0x00, 0x60, 0xb8, 0x01, 0x00, 0xef, 0xba, 0xf8, 0x03, 0xee,
    ];
    drv.write(CODE_AT, &code);
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE_AT;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;
    match vcpu.run()? {
        VcpuExit::IoOut(0x3f8, _) => println!(
            "vCPU wrote queue 1 to port {NOTIFY_PORT:#x}: no exit for it, KVM signalled the kick eventfd"
        ),
        other => return Err(format!("unexpected vCPU exit {other:?}").into()),
    }

    // The VMM's event loop: poll what the device asks for, hand events back to it.
    for _ in 0..10 {
        let watches = dev.watches();
        let mut fds: Vec<PollFd<'_>> = watches
            .iter()
            .map(|w| {
                // SAFETY: the fd belongs to the device (or its backend), which lives across
                // this poll; `watches` borrows the device for as long as `fds` exists.
                let fd = unsafe { BorrowedFd::borrow_raw(w.fd.as_raw_fd()) };
                PollFd::new(fd, PollFlags::POLLIN)
            })
            .collect();
        if poll(&mut fds, PollTimeout::from(100u16))? == 0 {
            break;
        }
        let ready: Vec<_> = fds
            .iter()
            .zip(&watches)
            .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, w)| w.event)
            .collect();
        drop(fds);
        drop(watches);
        for ev in ready {
            println!("event {ev:?}");
            dev.handle(ev, &drv.mem)?;
        }
    }

    let mut buf = [0u8; 1518];
    let got = peer
        .recv(&[IoBufMut::from_mut_slice(&mut buf)])?
        .ok_or("no frame arrived")?;
    assert_eq!(&buf[..got.len], &frame[..]);
    let tx = dev.stats().pairs[0].1;
    assert_eq!(tx.notifications, 1, "one used-ring interrupt");
    println!(
        "frame of {} bytes crossed the device; its used-ring interrupt went to KVM through the irqfd of GSI {}",
        got.len,
        GSI_BASE + 1
    );
    Ok(())
}
