//! Compiles the project's XDP program (`src/bpf/steer.bpf.c`) with clang into `OUT_DIR`, and
//! `src/bpf/foreign.bpf.c`, a program that is not ours, for the tests.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CLANG");
    compile("src/bpf/steer.bpf.c", "steer.bpf.o");
    compile("src/bpf/foreign.bpf.c", "foreign.bpf.o");
}

fn compile(src: &str, obj: &str) {
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join(obj);
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed ({s}) compiling {src}"),
        Err(e) => panic!(
            "running {clang} to compile {src}: {e}; install clang and llvm (apt-get install clang llvm libbpf-dev), or set CLANG"
        ),
    }
}
