//! Network namespaces for privileged tests and benchmarks (cargo feature `test-utils`).
//!
//! [`NetNs::new`] creates a named namespace with `ip netns add` (so `ip netns exec` and other
//! tools can reach it), [`NetNs::enter`] moves the calling thread into it until the guard is
//! dropped, and dropping the [`NetNs`] deletes it: every link in it goes with it. Names start
//! with `volt-test-<pid>-`; a namespace left by a process that died (a crash, a kill) is
//! removed by the next [`NetNs::new`].

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};

const PREFIX: &str = "volt-test-";

/// Whether the process can create namespaces and links (root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns `true` (and prints why) when a privileged test must be skipped.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    println!("SKIPPED {test}: needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces and links");
    true
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> io::Result<Output> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: File,
}

/// The calling thread is in a namespace until this is dropped.
#[derive(Debug)]
pub struct Entered {
    back: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(self.back.as_fd(), CloneFlags::CLONE_NEWNET) {
            log::error!("could not return to the original network namespace: {e}");
        }
    }
}

fn sweep_stale() {
    let Ok(out) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

impl NetNs {
    /// Creates `volt-test-<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> io::Result<NetNs> {
        static N: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let name = format!(
            "{PREFIX}{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = run("ip", &["netns", "del", &name]);
                return Err(e);
            }
        };
        let ns = NetNs { name, file };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`, `ip link set ... netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, for `setns` or `IFLA_NET_NS_FD`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) -> io::Result<Output> {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }

    /// Turns IPv6 off in the namespace (links made after it have none): no router or
    /// neighbour solicitations on the links to get in a test's way.
    pub fn without_ipv6(&self) -> io::Result<()> {
        for k in ["all", "default"] {
            let key = format!("net.ipv6.conf.{k}.disable_ipv6=1");
            let out = self.exec(&["sysctl", "-qw", &key])?;
            if !out.status.success() {
                return Err(io::Error::other(format!("sysctl {key} in {}", self.name)));
            }
        }
        Ok(())
    }

    /// Moves the calling thread into the namespace until the guard is dropped. Sockets and
    /// devices the thread opens meanwhile (netlink, `/dev/net/tun`) belong to it.
    pub fn enter(&self) -> io::Result<Entered> {
        let back = File::open("/proc/thread-self/ns/net")?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(Entered { back })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            log::error!("could not delete namespace {}: {e}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair: `a_dev` in `a`, `b_dev` in `b`, `queues` queues each,
/// both up. The namespaces (and the pair) go when dropped.
#[derive(Debug)]
pub struct VethPair {
    /// The first namespace.
    pub a: NetNs,
    /// The second namespace.
    pub b: NetNs,
}

impl VethPair {
    /// Namespaces `<tag>a` and `<tag>b` and the pair between them.
    pub fn new(tag: &str, a_dev: &str, b_dev: &str, queues: u16) -> io::Result<VethPair> {
        let a = NetNs::new(&format!("{tag}a"))?;
        let b = NetNs::new(&format!("{tag}b"))?;
        let q = queues.to_string();
        run(
            "ip",
            &[
                "link",
                "add",
                a_dev,
                "netns",
                a.name(),
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                b_dev,
                "netns",
                b.name(),
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
            ],
        )?;
        run("ip", &["-n", a.name(), "link", "set", a_dev, "up"])?;
        run("ip", &["-n", b.name(), "link", "set", b_dev, "up"])?;
        Ok(VethPair { a, b })
    }

    /// A counter of `dev` in namespace `ns` (`rx_packets`...), from its sysfs statistics.
    pub fn counter(ns: &NetNs, dev: &str, name: &str) -> io::Result<u64> {
        let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/statistics/{name}")])?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(io::Error::other)
    }
}

/// Runs a command (program first) and returns its stdout; panics with its output when it
/// fails. For tests and benchmarks that have no failure path of their own.
pub fn sh(args: &[&str]) -> String {
    let out = run(args[0], &args[1..]).unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
