//! `cargo xtask image`: the container image of the agent (`deploy/Containerfile`), built with
//! podman from scratch.
//!
//! The build context is made here, under `target/image/`: `rootfs/usr/bin/ztrace` (the release
//! binary with its debug info stripped) and the shared libraries that `ldd` lists for it, copied
//! to their own paths, so the image holds exactly what the binary loads: the glibc binary with
//! its four libraries (3.2 MB). A static musl build also works here (x86_64-unknown-linux-musl
//! with musl-tools: static-pie, 15.9 MB stripped, traced curl) and would save those 3.2 MB, but
//! it is not used: the image would run another build than every test and benchmark, the image
//! would cost a second full agent build, and musl's allocator is slower under the agent's
//! multi-threaded allocation (not measured here). The image is also saved as `target/image/ztrace.tar` (docker-archive),
//! which `ctr images import` and `podman load` read.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build::{self, Profile};
use crate::toolchain::apt_install;
use crate::util::{self, say};

/// The image's name.
pub const IMAGE: &str = "localhost/ztrace";

/// Debian packages the build needs.
pub const PACKAGES: &[&str] = &["podman", "buildah", "runc", "catatonit", "binutils"];

/// What `podman` needs on every call on these machines: no systemd or journald to talk to.
pub const PODMAN_GLOBAL: &[&str] = &["--cgroup-manager=cgroupfs", "--events-backend=file"];

/// The built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// `localhost/ztrace:<version>`.
    pub reference: String,
    /// The image as a docker-archive tarball.
    pub archive: PathBuf,
    /// Size of the image's root file system, in bytes.
    pub size: u64,
}

/// `cargo xtask image`: builds the agent, then the image; prints its name and size.
pub fn image() -> Result<()> {
    let image = build_image()?;
    say!(
        "image {} ({:.1} MB), saved as {}",
        image.reference,
        image.size as f64 / 1e6,
        image.archive.display()
    );
    Ok(())
}

/// Builds the release binary and the image from it.
pub fn build_image() -> Result<Image> {
    apt_install(PACKAGES)?;
    let binary = build::build(Profile::Release)?;
    image_from(&binary)
}

/// Builds the image around an already built `ztrace` binary.
pub fn image_from(binary: &Path) -> Result<Image> {
    let context = util::target_dir().join("image");
    let rootfs = context.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)
            .with_context(|| format!("removing {}", rootfs.display()))?;
    }
    std::fs::create_dir_all(rootfs.join("usr/bin"))?;
    let agent = rootfs.join("usr/bin/ztrace");
    util::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&agent),
    )?;
    let ldd = util::output_of(Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {} failed", binary.display()))?;
    if ldd.contains("not found") {
        bail!("ldd cannot find a library of the agent: {ldd}");
    }
    for lib in shared_libraries(&ldd) {
        let to = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // The file itself, not the symlink (`/lib64/ld-linux-x86-64.so.2` is one).
        let real = std::fs::canonicalize(&lib).with_context(|| format!("{}", lib.display()))?;
        std::fs::copy(&real, &to).with_context(|| format!("copying {}", real.display()))?;
    }
    // Where the DaemonSet mounts the host's tracefs (attaching tracepoints reads event ids there).
    std::fs::create_dir_all(rootfs.join("sys/kernel/tracing"))?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;

    let version = env!("CARGO_PKG_VERSION");
    let reference = format!("{IMAGE}:{version}");
    let containerfile = util::repo_root().join("deploy/Containerfile");
    util::run(
        podman()
            .args(["build", "--quiet", "-f"])
            .arg(&containerfile)
            .args(["-t", &reference, "-t", &format!("{IMAGE}:latest")])
            .arg(&context),
    )?;
    let archive = context.join("ztrace.tar");
    let _ = std::fs::remove_file(&archive);
    util::run(
        podman()
            .args(["save", "--quiet", "--format", "docker-archive", "-o"])
            .arg(&archive)
            .arg(&reference),
    )?;
    let size =
        util::output_of(podman().args(["image", "inspect", "--format", "{{.Size}}", &reference]))
            .and_then(|s| s.trim().parse().ok())
            .context("podman image inspect gave no size")?;
    Ok(Image {
        reference,
        archive,
        size,
    })
}

/// Python packages of the manifests' checks (tests/tests/kubernetes.rs), in their own venv
/// (`target/k8s-venv`): checkov pins versions that the OTLP receiver's venv must not share.
const K8S_VENV_PACKAGES: &[&str] = &["kubernetes-validate", "checkov"];

/// What tests/tests/kubernetes.rs needs besides root: the image built from `binary`, containerd,
/// busybox-static, and the venv with kubernetes-validate and checkov.
pub fn prepare_tests(binary: &Path) -> Result<()> {
    apt_install(PACKAGES)?;
    apt_install(&["containerd", "busybox-static"])?;
    util::python_venv(
        "k8s-venv",
        K8S_VENV_PACKAGES,
        "import checkov, kubernetes_validate",
    )?;
    let image = image_from(binary)?;
    say!(
        "image {} ({:.1} MB)",
        image.reference,
        image.size as f64 / 1e6
    );
    Ok(())
}

/// `podman` with the global flags these machines need.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(PODMAN_GLOBAL);
    cmd
}

/// The absolute paths of the libraries in `ldd`'s output (`libc.so.6 => /lib/.../libc.so.6
/// (0x...)` and the loader's own `/lib64/ld-linux-x86-64.so.2 (0x...)`); the vDSO has none.
fn shared_libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_paths() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f5e)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5e)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f5e)\n";
        assert_eq!(
            shared_libraries(ldd),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }
}
