//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is taken from `ZTRACE_EBPF_OBJECT` or, by default, from where `xtask build-ebpf`
//! leaves it. When there is none (a plain `cargo test` without the eBPF toolchain), an empty
//! object is embedded and the binary says at start how to build a complete one.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=ZTRACE_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("ZTRACE_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../ebpf/target/bpfel-unknown-none/release/ztrace"));
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("ztrace.bpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    fs::write(&out, bytes).expect("write OUT_DIR/ztrace.bpf.o");
}
