//! `cargo xtask setup`: the eBPF toolchain, installed where missing, and Debian packages in general.
//!
//! Detection and action are kept apart: [`plan`] looks at the machine and lists the [`Step`]s that
//! are missing (pure parsing functions decide from each tool's output), [`setup`] prints and applies
//! them. With everything present it runs only a few `--version`-style commands, and never
//! `apt-get update`. It does not touch the stable toolchain that runs xtask itself.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use crate::util::{self, say};

/// The bpf-linker release the eBPF crate is built with (see shared notes/toolchain.md).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major bpf-linker must link: the one of the nightly rustc that emits the bitcode.
pub const LLVM_MAJOR: u32 = 22;
/// Debian packages bpf-linker builds against.
pub const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// One missing piece and how it is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `rustup toolchain install <channel> --profile minimal --component rust-src`.
    InstallToolchain(String),
    /// `rustup component add rust-src --toolchain <channel>`.
    AddRustSrc(String),
    /// `apt-get install` of these packages (after one `apt-get update`).
    AptInstall(Vec<String>),
    /// `cargo install bpf-linker` against Debian's LLVM.
    InstallBpfLinker,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::InstallToolchain(channel) => write!(
                f,
                "installing the {channel} toolchain with rust-src (about 1 minute)"
            ),
            Step::AddRustSrc(channel) => write!(f, "adding rust-src to the {channel} toolchain"),
            Step::AptInstall(packages) => write!(f, "installing {} (apt)", packages.join(" ")),
            Step::InstallBpfLinker => {
                write!(f, "installing bpf-linker {BPF_LINKER_VERSION} on LLVM {LLVM_MAJOR} (about 2 minutes)")
            }
        }
    }
}

/// `cargo xtask setup [--dry-run]`.
pub fn setup(dry_run: bool) -> Result<()> {
    let steps = plan();
    if steps.is_empty() {
        say!("eBPF toolchain present ({} + rust-src, bpf-linker {BPF_LINKER_VERSION} on LLVM {LLVM_MAJOR})", ebpf_channel());
        return Ok(());
    }
    for step in &steps {
        if dry_run {
            say!("missing, would run: {step}");
        } else {
            say!("{step}...");
            apply(step)?;
        }
    }
    if !dry_run {
        let left = plan();
        anyhow::ensure!(
            left.is_empty(),
            "setup finished but these are still missing: {left:?}"
        );
        say!("eBPF toolchain ready");
    }
    Ok(())
}

/// What is missing on this machine, in the order it must be installed.
pub fn plan() -> Vec<Step> {
    let channel = ebpf_channel();
    let mut steps = Vec::new();

    let toolchain = rustup(&["run", &channel, "rustc", "--version"]);
    if toolchain.is_none() {
        steps.push(Step::InstallToolchain(channel.clone()));
    } else {
        let components = rustup(&["component", "list", "--installed", "--toolchain", &channel]);
        if !has_component(components.as_deref().unwrap_or(""), "rust-src") {
            steps.push(Step::AddRustSrc(channel.clone()));
        }
    }

    let version = util::output_of(Command::new("bpf-linker").arg("--version"));
    let ldd =
        util::which("bpf-linker").and_then(|path| util::output_of(Command::new("ldd").arg(path)));
    if !bpf_linker_ok(version.as_deref(), ldd.as_deref()) {
        let packages = missing_packages(LLVM_PACKAGES);
        if !packages.is_empty() {
            steps.push(Step::AptInstall(packages));
        }
        steps.push(Step::InstallBpfLinker);
    }
    steps
}

fn apply(step: &Step) -> Result<()> {
    match step {
        Step::InstallToolchain(channel) => util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            channel,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ])),
        Step::AddRustSrc(channel) => util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            channel,
        ])),
        Step::AptInstall(packages) => apt_install(packages),
        Step::InstallBpfLinker => {
            let mut cmd = util::cargo();
            util::clear_outer_cargo_env(&mut cmd);
            cmd.env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                    "--force",
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{LLVM_MAJOR}"),
                ]);
            util::run(&mut cmd)
        }
    }
}

/// The channel `ebpf/rust-toolchain.toml` selects (`nightly` unless it pins a date).
pub fn ebpf_channel() -> String {
    let file = util::repo_root().join("ebpf/rust-toolchain.toml");
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| toolchain_channel(&text))
        .unwrap_or_else(|| "nightly".into())
}

/// The `channel = "..."` of a rust-toolchain.toml.
fn toolchain_channel(toml: &str) -> Option<String> {
    toml.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "channel").then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// Runs rustup with auto-install off (so a missing toolchain is reported, not silently fetched).
fn rustup(args: &[&str]) -> Option<String> {
    let mut cmd = Command::new("rustup");
    util::clear_outer_cargo_env(&mut cmd);
    util::output_of(cmd.env("RUSTUP_AUTO_INSTALL", "0").args(args))
}

/// Whether `rustup component list --installed` output names the component.
fn has_component(list: &str, component: &str) -> bool {
    list.lines()
        .any(|line| line.split_whitespace().next() == Some(component))
}

/// Whether the installed bpf-linker is the right one: `--version` prints the pinned release and,
/// where it links LLVM dynamically (`ldd`), that LLVM is the right major.
fn bpf_linker_ok(version: Option<&str>, ldd: Option<&str>) -> bool {
    let Some(version) = version else { return false };
    let right_release = version.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION);
    let llvm_lines: Vec<&str> = ldd
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains("libLLVM"))
        .collect();
    let right_llvm = llvm_lines
        .iter()
        .all(|l| l.contains(&format!(".so.{LLVM_MAJOR}")) && !l.contains("not found"));
    right_release && right_llvm
}

/// Whether this xtask run has already run `apt-get update`.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Installs the Debian packages that are not installed yet, after one `apt-get update` per
/// xtask run at most; does nothing (and no update) when all are there.
pub fn apt_install<S: AsRef<str>>(packages: &[S]) -> Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    if !APT_UPDATED.load(Ordering::Relaxed) {
        say!("running apt-get update...");
        util::run(
            util::as_root("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["update", "-q"]),
        )?;
        APT_UPDATED.store(true, Ordering::Relaxed);
    }
    say!("installing {} (apt)...", missing.join(" "));
    util::run(
        util::as_root("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .with_context(|| format!("could not install {}", missing.join(" ")))
}

/// Where [`apt_install_backports`] adds Debian's backports suite.
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/ztrace-backports.sources";

/// Installs packages that only Debian's backports suite has (a newer Go), adding that suite to
/// apt's sources first when this is a Debian release without it.
pub fn apt_install_backports<S: AsRef<str>>(packages: &[S]) -> Result<()> {
    if missing_packages(packages).is_empty() {
        return Ok(());
    }
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned());
    if let Some(codename) = codename.filter(|c| !c.is_empty()) {
        let suite = format!("{codename}-backports");
        let listed = util::output_of(Command::new("grep").args([
            "-rqs",
            &suite,
            "/etc/apt/sources.list",
            "/etc/apt/sources.list.d",
        ]))
        .is_some();
        if !listed && !Path::new(BACKPORTS_SOURCES).exists() {
            say!("adding Debian's {suite} suite to apt's sources ({BACKPORTS_SOURCES})...");
            std::fs::write(
                BACKPORTS_SOURCES,
                format!(
                    "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
                     Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
                ),
            )
            .with_context(|| format!("could not write {BACKPORTS_SOURCES}"))?;
            APT_UPDATED.store(false, Ordering::Relaxed);
        }
    }
    apt_install(packages)
}

/// The packages of the list that dpkg does not report as installed.
pub fn missing_packages<S: AsRef<str>>(packages: &[S]) -> Vec<String> {
    packages
        .iter()
        .map(AsRef::as_ref)
        .filter(|package| {
            let status =
                util::output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]));
            !dpkg_installed(status.as_deref())
        })
        .map(str::to_owned)
        .collect()
}

/// Whether `dpkg-query -W -f='${Status}'` output says installed.
fn dpkg_installed(status: Option<&str>) -> bool {
    status.is_some_and(|s| s.trim().ends_with("ok installed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_is_read_from_rust_toolchain_toml() {
        assert_eq!(
            toolchain_channel("[toolchain]\nchannel = \"nightly\"\ncomponents = [\"rust-src\"]\n")
                .as_deref(),
            Some("nightly")
        );
        assert_eq!(
            toolchain_channel("[toolchain]\nchannel=\"nightly-2026-05-19\"\n").as_deref(),
            Some("nightly-2026-05-19")
        );
        assert_eq!(toolchain_channel("[toolchain]\n"), None);
        assert_eq!(
            ebpf_channel(),
            "nightly",
            "ebpf/rust-toolchain.toml changed: check setup"
        );
    }

    #[test]
    fn rust_src_is_detected_in_the_component_list() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
        assert!(!has_component("", "rust-src"));
    }

    #[test]
    fn bpf_linker_needs_the_pinned_release_on_llvm_22() {
        let ldd22 = "\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f)\n\tlibc.so.6 => /lib/libc.so.6\n";
        let ldd_rust = "\tlibLLVM.so.22.1-rust-1.97.0-nightly => /p/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x1)\n";
        let ldd21 = "\tlibLLVM.so.21.1 => /usr/lib/llvm-21/lib/libLLVM.so.21.1 (0x00007f)\n";
        let ldd_gone = "\tlibLLVM.so.22.1 => not found\n";
        assert!(bpf_linker_ok(Some("bpf-linker 0.13.0\n"), Some(ldd22)));
        assert!(bpf_linker_ok(Some("bpf-linker 0.13.0\n"), Some(ldd_rust)));
        assert!(
            bpf_linker_ok(Some("bpf-linker 0.13.0\n"), None),
            "static or ldd unavailable: trust --version"
        );
        assert!(!bpf_linker_ok(None, Some(ldd22)), "absent or failing");
        assert!(
            !bpf_linker_ok(Some("bpf-linker 0.9.13\n"), Some(ldd22)),
            "other release"
        );
        assert!(
            !bpf_linker_ok(Some("bpf-linker 0.13.0\n"), Some(ldd21)),
            "other LLVM"
        );
        assert!(
            !bpf_linker_ok(Some("bpf-linker 0.13.0\n"), Some(ldd_gone)),
            "LLVM removed"
        );
    }

    #[test]
    fn dpkg_status_is_parsed() {
        assert!(dpkg_installed(Some("install ok installed")));
        assert!(!dpkg_installed(Some("deinstall ok config-files")));
        assert!(!dpkg_installed(Some("unknown ok not-installed")));
        assert!(!dpkg_installed(None));
    }

    #[test]
    fn an_unknown_package_is_missing() {
        assert_eq!(
            missing_packages(&["surely-not-a-debian-package-ztrace"]),
            ["surely-not-a-debian-package-ztrace"]
        );
    }
}
