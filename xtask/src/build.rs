//! `cargo xtask build-ebpf`, `build` and `run`: the kernel object, then the agent that embeds it.
//!
//! The eBPF crate is its own cargo workspace under `ebpf/`, built by the nightly toolchain that
//! `ebpf/rust-toolchain.toml` names, for `bpfel-unknown-none` (set in `ebpf/.cargo/config.toml`).
//! The agent is then built by the stable toolchain with `ZTRACE_EBPF_OBJECT` pointing at that
//! object; the agent's build.rs embeds it. Cargo decides what is stale in both builds.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::toolchain;
use crate::util::{self, say};

/// The cargo profile of the agent build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

pub fn profile(debug: bool) -> Profile {
    if debug {
        Profile::Debug
    } else {
        Profile::Release
    }
}

/// Where the eBPF build leaves the object (an ELF for the BPF machine).
pub fn ebpf_object() -> PathBuf {
    util::repo_root().join("ebpf/target/bpfel-unknown-none/release/ztrace")
}

/// Where the agent build leaves `ztrace`.
pub fn agent_binary(profile: Profile) -> PathBuf {
    util::target_dir()
        .join(match profile {
            Profile::Release => "release",
            Profile::Debug => "debug",
        })
        .join("ztrace")
}

/// `cargo xtask build-ebpf`: builds the kernel programs and returns the object's path.
pub fn build_ebpf() -> Result<PathBuf> {
    let channel = toolchain::ebpf_channel();
    say!("building the eBPF programs ({channel}, bpfel-unknown-none)...");
    let mut cmd = Command::new("rustup");
    // The outer `cargo xtask` is a stable `cargo run`: its RUSTUP_TOOLCHAIN, CARGO_TARGET_DIR,
    // RUSTFLAGS... must not leak into the nightly build of another workspace.
    util::clear_outer_cargo_env(&mut cmd);
    cmd.args(["run", &channel, "cargo", "build", "--release"])
        .current_dir(util::repo_root().join("ebpf"));
    util::run(&mut cmd)
        .context("the eBPF build failed (is the toolchain there? `cargo xtask setup`)")?;
    let object = ebpf_object();
    ensure!(
        is_bpf_elf(&object)?,
        "{} is not an ELF object for the BPF machine",
        object.display()
    );
    Ok(object)
}

/// Whether a file is an ELF object with `e_machine == EM_BPF` (247).
fn is_bpf_elf(path: &std::path::Path) -> Result<bool> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("the eBPF build left no {}", path.display()))?;
    Ok(bytes.len() > 20
        && bytes[..4] == *b"\x7fELF"
        && u16::from_le_bytes([bytes[18], bytes[19]]) == 247)
}

/// `cargo xtask build [--debug]`: setup, eBPF programs, then the agent; returns the agent's path.
pub fn build(profile: Profile) -> Result<PathBuf> {
    toolchain::setup(false)?;
    build_after_setup(profile)
}

/// The eBPF programs, then the agent, on a machine already set up; returns the agent's path.
pub fn build_after_setup(profile: Profile) -> Result<PathBuf> {
    let object = build_ebpf()?;
    say!("building the agent ({profile:?})...");
    let mut cmd = util::cargo();
    cmd.current_dir(util::repo_root())
        .env("ZTRACE_EBPF_OBJECT", &object)
        .args(["build", "-p", "ztrace"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let binary = agent_binary(profile);
    ensure!(
        binary.is_file(),
        "the agent build left no {}",
        binary.display()
    );
    say!("built {}", binary.display());
    Ok(binary)
}

/// `cargo xtask run [-- ARGS]`: builds, then becomes `ztrace ARGS` (through `sudo -E` when not root).
pub fn run(args: &[String]) -> Result<()> {
    let binary = build(Profile::Release)?;
    let mut cmd = if util::is_root() {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    cmd.args(args);
    say!("$ {}", util::display(&cmd));
    // exec: the agent gets our stdio and signals, and its exit code is ours.
    let error = cmd.exec();
    bail!("could not run {}: {error}", binary.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_where_the_agent_build_and_docs_expect_them() {
        assert!(ebpf_object().ends_with("ebpf/target/bpfel-unknown-none/release/ztrace"));
        assert!(agent_binary(Profile::Release).ends_with("release/ztrace"));
        assert!(agent_binary(Profile::Debug).ends_with("debug/ztrace"));
    }

    #[test]
    fn only_bpf_elf_objects_pass() {
        let dir = std::env::temp_dir().join(format!("xtask-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[18..20].copy_from_slice(&247u16.to_le_bytes());
        let bpf = dir.join("bpf");
        std::fs::write(&bpf, &header).expect("write");
        header[18..20].copy_from_slice(&62u16.to_le_bytes());
        let x86 = dir.join("x86");
        std::fs::write(&x86, &header).expect("write");
        assert!(is_bpf_elf(&bpf).expect("read"));
        assert!(!is_bpf_elf(&x86).expect("read"));
        assert!(is_bpf_elf(&dir.join("absent")).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
