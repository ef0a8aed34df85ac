//! A real Linux guest for end-to-end tests: Debian's kernel, an initramfs of
//! `busybox-static` and the virtio-net modules, booted by `qemu-system-x86_64` under TCG.
//!
//! - [`guest_image`] builds the kernel + initramfs pair once and caches it under
//!   `target/volt-guest/<kernel version>-<key>/`. The key covers the kernel, the modules,
//!   busybox and the [`INIT_SCRIPT`], so a change to any of them builds a new image; the
//!   image is built in a directory of its own and renamed into place, so tests (or test
//!   binaries) building at the same time cannot see a half-written one.
//! - [`boot`] / [`boot_with`] start QEMU with the caller's `-netdev`/`-device` arguments and a
//!   shell command for the guest, read the serial console, and return what the command printed
//!   and its exit status. QEMU is killed on timeout, on error and when a test panics.
//! - [`serve_blob`] is a one-request HTTP server for downloads into the guest.
//!
//! The guest's `/init` reads its settings from the kernel command line:
//! `volt.ip=ADDR/LEN` (eth0's address), `volt.gw=ADDR` (default route), `volt.peer=ADDR`
//! (exported to the command as `$PEER`) and `volt.cmd=BASE64` (the command, run by busybox
//! `sh -o pipefail`). It prints one `VOLT-NET ...` line describing eth0, then `VOLT-BEGIN`,
//! the command's output, `VOLT-DONE rc=N`, and powers the machine off.
//!
//! Host requirements (Debian): `qemu-system-x86 busybox-static linux-image-amd64 cpio`;
//! [`missing_prerequisites`] names what is missing.

#![allow(dead_code)] // Each test binary uses part of this module.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The modules virtio-net needs, in `insmod` order (dependencies first). Modules that a
/// kernel has built in (`modules.builtin`) are skipped.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The apt command that installs everything the guest rig needs.
pub const APT_INSTALL: &str =
    "apt-get install -y --no-install-recommends qemu-system-x86 busybox-static linux-image-amd64 cpio";

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Printed by `/init` right before the command runs.
pub const BEGIN_MARKER: &str = "VOLT-BEGIN";
/// Printed by `/init` after the command, followed by ` rc=<exit status>`.
pub const DONE_MARKER: &str = "VOLT-DONE rc=";
/// Printed by `/init` once eth0 is configured (or `VOLT-NET none` without one).
pub const NET_MARKER: &str = "VOLT-NET ";

/// The guest's `/init` (busybox `sh`). Part of the cache key: editing it rebuilds the image.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# volt-net test guest; built by net-select/tests/guest/mod.rs.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

finish() {
    echo "VOLT-DONE rc=$1"
    sync
    poweroff -f
}
fail() {
    echo "VOLT-ERROR $*"
    finish 255
}

VOLT_IP= VOLT_GW= PEER= VOLT_CMD=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        volt.ip=*) VOLT_IP="${arg#volt.ip=}" ;;
        volt.gw=*) VOLT_GW="${arg#volt.gw=}" ;;
        volt.peer=*) PEER="${arg#volt.peer=}" ;;
        volt.cmd=*) VOLT_CMD="${arg#volt.cmd=}" ;;
    esac
done
export PEER VOLT_IP

for m in $(cat /etc/volt-modules); do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done

ip link set lo up
# Wait for eth0 only when there is a virtio-net PCI function (transitional or modern).
nic=0
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1af4 ] || continue
    case "$(cat "$d/device")" in 0x1000 | 0x1041) nic=1 ;; esac
done
i=0
while [ $nic = 1 ] && [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do
    usleep 100000
    i=$((i + 1))
done
if [ -e /sys/class/net/eth0 ]; then
    drv=$(basename "$(readlink /sys/class/net/eth0/device/driver)")
    if [ -n "$VOLT_IP" ]; then
        ip addr add "$VOLT_IP" dev eth0 || fail "ip addr add $VOLT_IP"
    fi
    ip link set eth0 up || fail "ip link set eth0 up"
    i=0
    while [ "$(cat /sys/class/net/eth0/operstate)" != up ] && [ $i -lt 100 ]; do
        usleep 50000
        i=$((i + 1))
    done
    if [ -n "$VOLT_GW" ]; then
        ip route add default via "$VOLT_GW" || fail "ip route add default via $VOLT_GW"
    fi
    rxq=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)
    txq=$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)
    echo "VOLT-NET eth0 driver=$drv operstate=$(cat /sys/class/net/eth0/operstate) mac=$(cat /sys/class/net/eth0/address) ip=$VOLT_IP peer=$PEER rx_queues=$rxq tx_queues=$txq cpus=$(nproc)"
else
    echo "VOLT-NET none"
fi

echo "$VOLT_CMD" | base64 -d > /tmp/cmd.sh || fail "volt.cmd is not base64"
echo "VOLT-BEGIN"
sh -o pipefail /tmp/cmd.sh </dev/null
finish $?
"#;

/// A bootable guest: a Debian kernel and the initramfs built for it.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The kernel's version (`uname -r` in the guest), e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// The kernel (a copy of `/boot/vmlinuz-<version>` in the cache).
    pub kernel: PathBuf,
    /// The gzip'd `newc` initramfs.
    pub initrd: PathBuf,
    /// The modules the initramfs loads, in order (those built into the kernel left out).
    pub modules: Vec<String>,
}

/// Whether the process runs as root (effective uid 0), read from `/proc/self/status`.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Why the guest rig cannot run here, or `None` when everything is installed: QEMU, a
/// Debian kernel with its modules, a static busybox and cpio. The message ends with the apt
/// command that fixes it.
pub fn missing_prerequisites() -> Option<String> {
    let mut missing = Vec::new();
    if !runs(QEMU, "--version") {
        missing.push(format!("{QEMU} (qemu-system-x86)"));
    }
    if find_kernel().is_err() {
        missing.push("a Debian kernel image (/boot/vmlinuz-*-amd64 with its /lib/modules: linux-image-amd64)".into());
    }
    if let Err(e) = check_static_busybox() {
        missing.push(e);
    }
    if !runs("cpio", "--version") {
        missing.push("cpio (cpio)".into());
    }
    (!missing.is_empty()).then(|| {
        format!(
            "missing {}; install with: {APT_INSTALL}",
            missing.join(", ")
        )
    })
}

/// Whether `program arg` can be started and exits 0.
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Builds (or finds in the cache) the guest image. The first call in a process does the work;
/// later calls, from any thread, get the same answer.
pub fn guest_image() -> Result<GuestImage, String> {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    IMAGE.get_or_init(build_or_reuse).clone()
}

/// The workspace's `target/` directory: the parent of `CARGO_TARGET_TMPDIR` (set for
/// integration tests), else `CARGO_TARGET_DIR`, else `target/` beside the `Cargo.lock` found
/// walking up from this crate.
fn target_dir() -> PathBuf {
    if let Some(tmp) = option_env!("CARGO_TARGET_TMPDIR") {
        if let Some(parent) = Path::new(tmp).parent() {
            return parent.to_path_buf();
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .unwrap_or(manifest)
        .join("target")
}

/// Orders kernel versions like `sort -V` would for Debian's names: numeric runs compare as
/// numbers (`6.1.0-10` after `6.1.0-9`).
fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (num, tail) = rest.split_at(digits);
        let text_len = tail.len() - tail.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (text, tail) = tail.split_at(text_len);
        key.push((num.parse().unwrap_or(0), text.to_string()));
        rest = tail;
    }
    key
}

/// The newest Debian kernel (`/boot/vmlinuz-*-amd64` with `/lib/modules/<version>/modules.dep`),
/// or the one named by `VOLT_GUEST_KERNEL` (a version). Returns `(version, vmlinuz)`.
fn find_kernel() -> Result<(String, PathBuf), String> {
    let none = || {
        "no Debian kernel image (/boot/vmlinuz-*-amd64 with its /lib/modules); \
         install one with: apt-get install linux-image-amd64"
            .to_string()
    };
    let wanted = std::env::var("VOLT_GUEST_KERNEL").ok();
    let mut found: Vec<(String, PathBuf)> = fs::read_dir("/boot")
        .map_err(|_| none())?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            let usable = version.ends_with("-amd64")
                && Path::new(&format!("/lib/modules/{version}/modules.dep")).is_file()
                && wanted.as_ref().is_none_or(|w| *w == version);
            usable.then(|| (version, e.path()))
        })
        .collect();
    found.sort_by_cached_key(|(v, _)| version_key(v));
    found.pop().ok_or_else(none)
}

/// Checks that `/bin/busybox` is statically linked (no `PT_INTERP` program header): Debian's
/// `busybox` package installs a dynamic one there, `busybox-static` a static one.
fn check_static_busybox() -> Result<(), String> {
    let elf = fs::read("/bin/busybox")
        .map_err(|e| format!("/bin/busybox ({e}; package busybox-static)"))?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let not_elf = || "/bin/busybox is not a 64-bit ELF (package busybox-static)".to_string();
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return Err(not_elf());
    }
    let phoff = u64_at(0x20).ok_or_else(not_elf)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(not_elf)? as usize;
    let phnum = u16_at(0x38).ok_or_else(not_elf)? as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let p_type = elf
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(not_elf)?;
        if p_type == PT_INTERP {
            return Err(
                "/bin/busybox is dynamically linked (package busybox; the guest needs busybox-static)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// FNV-1a, 64 bits: a hash that is the same in every build, for the cache key.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
        self
    }
    /// Adds a file's path, size and modification time (not its bytes: a package upgrade
    /// changes at least the time).
    fn add_file(&mut self, path: &Path) -> &mut Self {
        self.add(path.as_os_str().as_encoded_bytes());
        if let Ok(m) = fs::metadata(path) {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            self.add(&m.len().to_le_bytes()).add(&mtime.to_le_bytes());
        }
        self
    }
}

/// Where each of [`MODULES`] lives under `/lib/modules/<version>/`, from `modules.dep`; a
/// module listed in `modules.builtin` is left out. Fails naming a module that is neither.
fn resolve_modules(version: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let base = PathBuf::from(format!("/lib/modules/{version}"));
    let dep = fs::read_to_string(base.join("modules.dep"))
        .map_err(|e| format!("{}/modules.dep: {e}", base.display()))?;
    let builtin = fs::read_to_string(base.join("modules.builtin")).unwrap_or_default();
    // "kernel/drivers/net/virtio_net.ko.xz" -> "virtio_net"
    let name_of = |rel: &str| -> String {
        let file = rel.rsplit('/').next().unwrap_or(rel);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let mut out = Vec::new();
    for &module in MODULES {
        let path = dep
            .lines()
            .filter_map(|l| l.split(':').next())
            .find(|rel| name_of(rel) == module);
        match path {
            Some(rel) => out.push((module.to_string(), base.join(rel))),
            None if builtin.lines().any(|rel| name_of(rel) == module) => {}
            None => {
                return Err(format!(
                "kernel {version} has no module {module} (not in modules.dep nor modules.builtin)"
            ))
            }
        }
    }
    Ok(out)
}

/// Runs a command, failing with its stderr.
fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// Writes a module into the initramfs tree uncompressed (busybox's `insmod` reads `.ko.gz`
/// and `.ko.xz` only when built with the seamless-decompression options, and never `.ko.zst`,
/// so every module is decompressed here).
fn copy_module(src: &Path, dst: &Path) -> Result<(), String> {
    let s = src.to_string_lossy();
    let tool = if s.ends_with(".ko.xz") {
        Some(("xz", "xz-utils"))
    } else if s.ends_with(".ko.zst") {
        Some(("zstd", "zstd"))
    } else if s.ends_with(".ko.gz") {
        Some(("gzip", "gzip"))
    } else {
        None
    };
    match tool {
        None => fs::copy(src, dst)
            .map(|_| ())
            .map_err(|e| format!("copying {}: {e}", src.display())),
        Some((bin, package)) => {
            let bytes = run(Command::new(bin).arg("-dc").arg(src))
                .map_err(|e| format!("{e} (is {bin} installed? package {package})"))?;
            fs::write(dst, bytes).map_err(|e| format!("writing {}: {e}", dst.display()))
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Every path under `root`, relative and prefixed with `./`, parents before children, in a
/// fixed order (for `cpio`).
fn list_tree(root: &Path) -> Result<Vec<String>, String> {
    let mut out = vec![".".to_string()];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(root.join(&rel))
            .map_err(|e| format!("{}: {e}", root.join(&rel).display()))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let child = rel.join(e.file_name());
            out.push(format!("./{}", child.display()));
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(child);
            }
        }
    }
    Ok(out)
}

/// Packs `tree` as `find . | cpio -o -H newc | gzip` would, owned by root, into `out`.
fn pack_initramfs(tree: &Path, out: &Path) -> Result<(), String> {
    let names = list_tree(tree)?.join("\n") + "\n";
    let file = fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(tree)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cpio: {e} (package cpio)"))?;
    let cpio_out = cpio.stdout.take().ok_or("cpio: no stdout")?;
    let gzip = Command::new("gzip")
        .arg("-6")
        .stdin(Stdio::from(cpio_out))
        .stdout(Stdio::from(file))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("gzip: {e}"))?;
    let mut stdin = cpio.stdin.take().ok_or("cpio: no stdin")?;
    // The list is small next to the pipe buffer only by luck: write it from a thread.
    let writer = std::thread::spawn(move || stdin.write_all(names.as_bytes()));
    let cpio_done = cpio.wait_with_output().map_err(|e| format!("cpio: {e}"))?;
    let gzip_done = gzip.wait_with_output().map_err(|e| format!("gzip: {e}"))?;
    writer
        .join()
        .map_err(|_| "cpio writer panicked".to_string())?
        .map_err(|e| format!("writing cpio's file list: {e}"))?;
    for (name, done) in [("cpio", cpio_done), ("gzip", gzip_done)] {
        if !done.status.success() {
            return Err(format!(
                "{name}: {}: {}",
                done.status,
                String::from_utf8_lossy(&done.stderr).trim()
            ));
        }
    }
    Ok(())
}

fn build_or_reuse() -> Result<GuestImage, String> {
    let (version, vmlinuz) = find_kernel()?;
    check_static_busybox().map_err(|e| format!("{e}; install with: {APT_INSTALL}"))?;
    let modules = resolve_modules(&version)?;

    let mut key = Fnv::new();
    key.add(b"volt-guest v1")
        .add(INIT_SCRIPT.as_bytes())
        .add(version.as_bytes())
        .add_file(&vmlinuz)
        .add_file(Path::new("/bin/busybox"));
    for (name, path) in &modules {
        key.add(name.as_bytes()).add_file(path);
    }
    let cache = target_dir().join("volt-guest");
    let dir = cache.join(format!("{version}-{:016x}", key.0));
    let image = GuestImage {
        kernel_version: version.clone(),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
        modules: modules.iter().map(|(n, _)| n.clone()).collect(),
    };
    // The directory only ever appears complete (renamed into place below).
    if image.kernel.is_file() && image.initrd.is_file() {
        return Ok(image);
    }

    fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = cache.join(format!(".build-{}-{nanos}", std::process::id()));
    let result = build_into(&tmp, &vmlinuz, &modules);
    let result = result.and_then(|()| match fs::rename(&tmp, &dir) {
        Ok(()) => Ok(()),
        // Someone else finished first: theirs is as good as ours.
        Err(_) if image.kernel.is_file() && image.initrd.is_file() => Ok(()),
        Err(e) => Err(format!(
            "renaming {} to {}: {e}",
            tmp.display(),
            dir.display()
        )),
    });
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| image)
}

fn build_into(tmp: &Path, vmlinuz: &Path, modules: &[(String, PathBuf)]) -> Result<(), String> {
    let tree = tmp.join("root");
    let mkdir = |p: &Path| fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()));
    for d in ["bin", "dev", "etc", "lib/modules", "proc", "sys", "tmp"] {
        mkdir(&tree.join(d))?;
    }
    let busybox = tree.join("bin/busybox");
    fs::copy("/bin/busybox", &busybox).map_err(|e| format!("copying /bin/busybox: {e}"))?;
    set_mode(&busybox, 0o755)?;
    let init = tree.join("init");
    fs::write(&init, INIT_SCRIPT).map_err(|e| format!("{}: {e}", init.display()))?;
    set_mode(&init, 0o755)?;
    let mut order = String::new();
    for (name, path) in modules {
        copy_module(path, &tree.join(format!("lib/modules/{name}.ko")))?;
        order.push_str(name);
        order.push('\n');
    }
    fs::write(tree.join("etc/volt-modules"), order)
        .map_err(|e| format!("etc/volt-modules: {e}"))?;
    // A copy of the kernel, so the image stays bootable (and readable) whatever apt does.
    fs::copy(vmlinuz, tmp.join("vmlinuz"))
        .map_err(|e| format!("copying {}: {e}", vmlinuz.display()))?;
    pack_initramfs(&tree, &tmp.join("initrd.gz"))?;
    fs::remove_dir_all(&tree).map_err(|e| format!("{}: {e}", tree.display()))
}

/// How to boot a guest. [`BootOptions::default`] is one vCPU, 512 MiB, eth0 at
/// `10.0.2.15/24` with `10.0.2.2` as peer and gateway (QEMU's user networking), 120 s.
#[derive(Clone, Debug)]
pub struct BootOptions {
    /// vCPUs (`-smp`). virtio-net uses min(queue pairs, vCPUs) queue pairs.
    pub smp: u32,
    /// Guest memory in MiB: `-m` and the size of the shared memfd backend.
    pub mem_mib: u32,
    /// eth0's address with prefix length (`volt.ip`).
    pub ip: String,
    /// The address the command talks to, `$PEER` in the guest (`volt.peer`).
    pub peer: String,
    /// Default route (`volt.gw`), if any.
    pub gateway: Option<String>,
    /// Killed after this long, counted from QEMU's start.
    pub timeout: Duration,
    /// Whether to print the console to stderr as it arrives (`VOLT_GUEST_ECHO=1` also does).
    pub echo: bool,
    /// The QEMU to run ([`Qemu::distribution`] by default).
    pub qemu: Qemu,
}

/// A QEMU binary and the firmware directory it needs (`-L`), if not its built-in one.
#[derive(Clone, Debug)]
pub struct Qemu {
    /// `qemu-system-x86_64`.
    pub bin: PathBuf,
    /// A firmware directory searched first.
    pub data: Option<PathBuf>,
    /// `QEMU emulator version X.Y.Z ...`'s `X.Y.Z`.
    pub version: String,
}

/// Where `scripts/deps.sh` unpacks Debian's bookworm-backports QEMU (without installing it).
pub fn backports_qemu_dir() -> PathBuf {
    target_dir().join("qemu-bpo")
}

fn qemu_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map(|v| v.to_string())
}

impl Qemu {
    /// The distribution's `qemu-system-x86_64` (QEMU 7.2 on Debian bookworm).
    pub fn distribution() -> Qemu {
        let bin = PathBuf::from(format!("/usr/bin/{QEMU}"));
        let version = qemu_version(&bin).unwrap_or_default();
        Qemu {
            bin,
            data: None,
            version,
        }
    }

    /// The major version.
    pub fn major(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    /// A QEMU whose virtio-net-pci with MSI-X (its default) runs a vhost-user-net device under
    /// TCG: QEMU 7.2 does not (it dereferences a KVM irqfd table that TCG never allocates, in
    /// `msix_set_vector_notifiers`, whatever the backend: DPDK's `net_vhost` crashes it the
    /// same way). The distribution's QEMU when it is 8 or newer, else the bookworm-backports
    /// QEMU that `scripts/deps.sh` unpacks under `target/qemu-bpo`; `Err` says how to get one.
    pub fn msix_capable() -> Result<Qemu, String> {
        let system = Qemu::distribution();
        if system.major() >= 8 {
            return Ok(system);
        }
        let dir = backports_qemu_dir();
        let bin = dir.join("usr/bin").join(QEMU);
        match qemu_version(&bin) {
            Some(version) => Ok(Qemu {
                bin,
                data: Some(dir.join("usr/share/qemu")),
                version,
            }),
            None => Err(format!(
                "QEMU {} cannot run a vhost-user-net device with MSI-X under TCG, and no newer QEMU is unpacked in {} (scripts/test.sh does it: source scripts/deps.sh; need_msix_qemu)",
                system.version,
                dir.display()
            )),
        }
    }
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            smp: 1,
            mem_mib: 512,
            ip: "10.0.2.15/24".into(),
            peer: "10.0.2.2".into(),
            gateway: Some("10.0.2.2".into()),
            timeout: Duration::from_secs(120),
            echo: std::env::var_os("VOLT_GUEST_ECHO").is_some_and(|v| v == "1"),
            qemu: Qemu::distribution(),
        }
    }
}

/// What a guest run gave.
#[derive(Clone, Debug)]
pub struct GuestRun {
    /// The whole serial console, `\r` removed.
    pub console: String,
    /// The console between [`BEGIN_MARKER`] and the done marker: the command's output (and
    /// any kernel message printed meanwhile).
    pub output: String,
    /// The command's exit status in the guest (255 when `/init` failed before it).
    pub rc: i32,
    /// The `VOLT-NET ...` line, if `/init` printed one.
    pub net: Option<String>,
    /// From QEMU's start to [`BEGIN_MARKER`]: kernel boot, modules, eth0 up.
    pub boot: Duration,
    /// From QEMU's start to the done marker.
    pub total: Duration,
    /// How QEMU exited (`None`: it was killed after the guest did not power off in time).
    pub qemu_status: Option<ExitStatus>,
}

/// A console line without its line end, `\r`s and terminal escape sequences (SeaBIOS clears
/// the screen with `ESC c`, `ESC [?7l`, `ESC [2J`).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next_if_eq(&'[').is_some() {
                    // CSI: parameters and intermediates up to a final byte in '@'..='~'.
                    while chars.next().is_some_and(|p| !('@'..='~').contains(&p)) {}
                } else {
                    chars.next();
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// A running QEMU, killed when dropped (a timeout, an error, a panicking test).
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Base64 (standard alphabet, padded), for `volt.cmd`.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The arguments for a vhost-user-net NIC: QEMU connects to `socket` (a server such as
/// `volt-net serve`), reconnecting every second if it goes away; `queues` queue pairs with
/// mergeable receive buffers on or off. No option ROM: the kernel is booted directly, and
/// iPXE would drive the NIC first. `msix`: QEMU's default interrupt vectors (MSI-X, what a
/// user gets), else `vectors=0` (legacy INTx), the only way QEMU 7.2 under TCG runs a
/// vhost-user-net device (see [`Qemu::msix_capable`]).
pub fn vhost_user_args(socket: &Path, queues: u16, mrg_rxbuf: bool, msix: bool) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=c0,path={},reconnect=1", socket.display()),
        "-netdev".into(),
        format!("vhost-user,id=n0,chardev=c0,queues={queues}"),
        "-device".into(),
        format!(
            "virtio-net-pci,netdev=n0,mq=on,{}mrg_rxbuf={},romfile=",
            if msix { "" } else { "vectors=0," },
            if mrg_rxbuf { "on" } else { "off" }
        ),
    ]
}

/// Boots the guest with [`BootOptions::default`] and `timeout`; see [`boot_with`].
pub fn boot(
    image: &GuestImage,
    netdev_args: &[String],
    cmd: &str,
    timeout: Duration,
) -> Result<GuestRun, String> {
    boot_with(
        image,
        netdev_args,
        cmd,
        &BootOptions {
            timeout,
            ..BootOptions::default()
        },
    )
}

/// Boots `image` under QEMU (q35, TCG, memory in a shared memfd so vhost-user backends can map
/// it) with `netdev_args` appended (e.g. `-netdev user,id=n0 -device virtio-net-pci,netdev=n0`),
/// runs `cmd` with busybox `sh -o pipefail` in the guest, and returns the console, the
/// command's output and exit status. Fails, with the end of the console, when the guest does
/// not finish within the timeout (QEMU is killed) or QEMU exits without the done marker.
pub fn boot_with(
    image: &GuestImage,
    netdev_args: &[String],
    cmd: &str,
    opts: &BootOptions,
) -> Result<GuestRun, String> {
    let mut append = format!(
        "console=ttyS0 quiet panic=-1 volt.ip={} volt.peer={}",
        opts.ip, opts.peer
    );
    if let Some(gw) = &opts.gateway {
        append.push_str(&format!(" volt.gw={gw}"));
    }
    append.push_str(&format!(" volt.cmd={}", base64(cmd.as_bytes())));
    // x86's COMMAND_LINE_SIZE; the kernel would cut the command silently.
    if append.len() >= 2048 {
        return Err(format!(
            "the kernel command line would be {} bytes (the limit is 2047): shorten the guest command",
            append.len()
        ));
    }
    let mem = format!("{}M", opts.mem_mib);
    let mut qemu = Command::new(&opts.qemu.bin);
    if let Some(data) = &opts.qemu.data {
        qemu.arg("-L").arg(data);
    }
    qemu.args(["-machine", "q35", "-accel", "tcg", "-m", &mem])
        .args(["-smp", &opts.smp.to_string()])
        .args(["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", &append])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-numa",
            "node,memdev=mem",
        ])
        .args(netdev_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let start = Instant::now();
    let mut guard = QemuGuard(
        qemu.spawn()
            .map_err(|e| format!("starting {QEMU}: {e}; install with: {APT_INSTALL}"))?,
    );
    let stdout = guard.0.stdout.take().ok_or("qemu: no stdout")?;
    let mut stderr = guard.0.stderr.take().ok_or("qemu: no stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    let echo = opts.echo;
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        // Lines end at EOF too; the reader stops when QEMU's stdout closes.
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = strip_escapes(&String::from_utf8_lossy(&line));
            if echo {
                eprintln!("guest| {text}");
            }
            if tx.send(text).is_err() {
                break;
            }
            line.clear();
        }
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = start + opts.timeout;
    let mut console = String::new();
    let mut output = String::new();
    let mut net = None;
    let mut boot = None;
    let mut done = None;
    let tail = |console: &str| -> String {
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            drop(guard);
            return Err(format!(
                "the guest did not finish within {:?}; console so far:\n{}",
                opts.timeout,
                tail(&console)
            ));
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                // SeaBIOS's screen-clearing escapes (removed) and kernel messages can share
                // a line with a marker: look for markers anywhere in it.
                if let Some(rc) = line
                    .find(DONE_MARKER)
                    .map(|i| &line[i + DONE_MARKER.len()..])
                {
                    let rc = rc
                        .trim()
                        .parse::<i32>()
                        .map_err(|e| format!("{line:?}: {e}"))?;
                    done = Some((rc, start.elapsed()));
                    break;
                } else if boot.is_none() && line.trim_end().ends_with(BEGIN_MARKER) {
                    boot = Some(start.elapsed());
                } else if boot.is_some() {
                    output.push_str(&line);
                    output.push('\n');
                } else if let Some(i) = line.find(NET_MARKER) {
                    net = Some(line[i..].to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let Some((rc, total)) = done else {
        let status = guard
            .0
            .wait()
            .map_or_else(|e| format!("wait failed: {e}"), |s| s.to_string());
        let err = stderr_reader.join().unwrap_or_default();
        return Err(format!(
            "{QEMU} exited ({status}) before the guest finished: {}\nconsole:\n{}",
            err.trim(),
            tail(&console)
        ));
    };
    // The guest powers off right after the marker; give it a moment, then kill it.
    let grace = Instant::now() + Duration::from_secs(10);
    let qemu_status = loop {
        match guard.0.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < grace => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    // Whatever the console printed while powering off.
    while let Ok(line) = rx.try_recv() {
        console.push_str(&line);
        console.push('\n');
    }
    Ok(GuestRun {
        console,
        output,
        rc,
        net,
        boot: boot.unwrap_or(total),
        total,
        qemu_status,
    })
}

/// What [`serve_blob`] did.
#[derive(Clone, Debug)]
pub struct Served {
    /// The request line (`GET /blob HTTP/1.0`).
    pub request: String,
    /// Body bytes written.
    pub bytes: u64,
    /// From the request's arrival to the last byte written.
    pub elapsed: Duration,
}

/// A one-shot HTTP/1.0 server: binds `addr` now (in the calling thread's network namespace;
/// port 0 picks one), then a thread answers the first `GET` with `200 OK`, `Content-Length` and
/// `bytes`, and anything else with `405`, and closes. The thread gives up when no client comes
/// within `accept_timeout`. Returns the bound address and the thread.
pub fn serve_blob(
    addr: SocketAddr,
    bytes: Vec<u8>,
    accept_timeout: Duration,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<Served>>)> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + accept_timeout;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no client on {local} within {accept_timeout:?}"),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        answer(stream, &bytes)
    });
    Ok((local, handle))
}

fn answer(mut stream: TcpStream, body: &[u8]) -> io::Result<Served> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(300)))?;
    // Read the request head (up to the blank line; bounded).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() > 16 * 1024 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    // Timed from the request: a guestfwd connects when QEMU starts, long before the guest asks.
    let start = Instant::now();
    if !request.starts_with("GET ") {
        stream.write_all(
            b"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected a GET, got {request:?}"),
        ));
    }
    write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok(Served {
        request,
        bytes: body.len() as u64,
        elapsed: start.elapsed(),
    })
}

/// `len` pseudo-random bytes (xorshift64*, seeded from the clock and the pid): incompressible
/// test data without a `rand` dependency.
pub fn random_blob(len: usize) -> Vec<u8> {
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32)
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The SHA-256 of `data` in hex, from coreutils' `sha256sum` (as the guest's busybox prints it).
pub fn sha256_hex(data: &[u8]) -> Result<String, String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sha256sum: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("sha256sum: no stdin")?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    writer
        .join()
        .map_err(|_| "sha256sum writer panicked".to_string())?
        .map_err(|e| format!("sha256sum: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "sha256sum printed nothing".to_string())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"ip addr; ping -c1 $PEER"),
            "aXAgYWRkcjsgcGluZyAtYzEgJFBFRVI="
        );
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("Booting from ROM..\x1bc\x1b[?7l\x1b[2JVOLT-NET eth0\r\n"),
            "Booting from ROM..VOLT-NET eth0"
        );
    }

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = vec![
            "6.1.0-10-amd64",
            "6.1.0-9-amd64",
            "6.12.1-amd64",
            "6.1.0-56-amd64",
        ];
        v.sort_by_cached_key(|s| version_key(s));
        assert_eq!(
            v,
            [
                "6.1.0-9-amd64",
                "6.1.0-10-amd64",
                "6.1.0-56-amd64",
                "6.12.1-amd64"
            ]
        );
    }
}
