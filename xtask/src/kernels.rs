//! The kernel matrix's ingredients: Debian's own kernels and a Debian root filesystem to boot
//! them with in qemu (`tests/tests/kernels.rs` boots them and runs ztrace inside).
//!
//! Made once and cached under `target/kernel-matrix/` (about 3 minutes and 200 MB on a fresh
//! machine): `debootstrap --variant=minbase bookworm` with python3, curl and OpenSSL; the kernels
//! are installed inside it from Debian's archive (so that `update-initramfs` makes their initrd
//! with the virtio and ext4 modules they need to find the root disk), then copied out to
//! `kernels/`, and the modules, apt caches and docs are removed from the tree. The tests add
//! ztrace and their programs and make a disk image of it per run.
//!
//! It deliberately knows nothing about ztrace: it only prepares machines to boot.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::toolchain::apt_install;
use crate::util::{self, say};

/// Host packages: the emulator, debootstrap, and mkfs.ext4/debugfs for the disk image.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "debootstrap",
    "e2fsprogs",
    "debian-archive-keyring",
];

/// The kernels of the matrix: Debian 11's 5.10 (which ztrace must refuse in one sentence),
/// Debian 12's 6.1 and bookworm-backports' 6.12, each the newest of its series in the archive.
/// (label, package name pattern for `apt-cache search --names-only`).
pub const KERNELS: &[(&str, &str)] = &[
    ("5.10", r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64$"),
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$"),
];

/// Packages of the guest: what the tests run inside (python3's http.server and ssl, curl with
/// OpenSSL, iproute2 for the loopback), and what the kernel packages need to make an initrd.
const GUEST_PACKAGES: &str =
    "python3,curl,openssl,ca-certificates,iproute2,kmod,initramfs-tools,procps";

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// Written last: a tree with this stamp is complete. Change it to make every cache anew.
const RECIPE: &str =
    "kernel-matrix v1: bookworm minbase; 5.10, 6.1, 6.12 cloud kernels; MODULES=list virtio ext4";

/// Where the matrix lives: `rootfs/` (the guest's tree) and `kernels/` (`vmlinuz-*`,
/// `initrd.img-*`).
pub struct Matrix {
    pub dir: PathBuf,
}

/// Installs the host packages and makes the root filesystem and kernels unless the cache has them.
pub fn prepare() -> Result<Matrix> {
    apt_install(HOST_PACKAGES)?;
    let dir = util::target_dir().join("kernel-matrix");
    let stamp = dir.join("ready");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == RECIPE) {
        say!("kernel matrix: cached in {}", dir.display());
        return Ok(Matrix { dir });
    }
    say!("kernel matrix: making a Debian root filesystem with Debian's 5.10, 6.1 and 6.12 kernels in {} (a few minutes, once)...", dir.display());
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("could not remove {}", dir.display()))?;
    }
    let tree = dir.join("rootfs.partial");
    std::fs::create_dir_all(&dir)?;
    util::run(
        util::as_root("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={GUEST_PACKAGES}"),
                "bookworm",
            ])
            .arg(&tree)
            .arg(MIRROR),
    )
    .context("debootstrap of the guest's root filesystem failed")?;

    write(
        &tree.join("etc/apt/sources.list.d/ztrace-matrix.list"),
        &format!(
            "deb {MIRROR} bookworm-backports main\ndeb {MIRROR} bullseye main\ndeb {SECURITY_MIRROR} bullseye-security main\n"
        ),
    )?;
    // An initrd with just what finds the root disk: small, and quick to unpack under emulation.
    write(
        &tree.join("etc/initramfs-tools/conf.d/ztrace-matrix.conf"),
        "MODULES=list\n",
    )?;
    write(
        &tree.join("etc/initramfs-tools/modules"),
        "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n",
    )?;
    util::run(chroot(&tree).args(["apt-get", "update", "-q"]))?;
    let mut packages = Vec::new();
    for (label, pattern) in KERNELS {
        let found =
            util::output_of(chroot(&tree).args(["apt-cache", "search", "--names-only", pattern]))
                .unwrap_or_default();
        let Some(package) = newest(found.lines().filter_map(|l| l.split_whitespace().next()))
        else {
            bail!("no package for Linux {label} ({pattern}) in Debian's archive");
        };
        say!("kernel matrix: Linux {label} is {package}");
        packages.push(package);
    }
    util::run(
        chroot(&tree)
            .args(["apt-get", "install", "-y", "-q", "--no-install-recommends"])
            .args(&packages),
    )
    .context("installing the kernels in the guest failed")?;

    let kernels = dir.join("kernels");
    std::fs::create_dir_all(&kernels)?;
    for entry in std::fs::read_dir(tree.join("boot"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.starts_with("vmlinuz-") || name.starts_with("initrd.img-") {
            std::fs::copy(&path, kernels.join(&name))
                .with_context(|| format!("copy {}", path.display()))?;
        }
    }
    // What the guest never uses: modules (the initrd has the few it needs), caches and docs.
    for gone in [
        "usr/lib/modules",
        "boot",
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
    ] {
        let path = tree.join(gone);
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
            std::fs::create_dir_all(&path)?;
        }
    }
    std::fs::rename(&tree, dir.join("rootfs"))?;
    write(&stamp, RECIPE)?;
    say!("kernel matrix: ready in {}", dir.display());
    Ok(Matrix { dir })
}

fn chroot(root: &Path) -> Command {
    let mut cmd = util::as_root("chroot");
    cmd.arg(root).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
}

/// The package with the highest ABI number (`linux-image-6.1.0-50-...` over `-9-`).
fn newest<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    names
        .max_by_key(|name| version_key(name))
        .map(str::to_owned)
}

/// The numbers in a package name, in order, for comparing versions.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_kernel_package_wins_by_number_not_by_text() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-50-cloud-amd64",
            "linux-image-6.1.0-10-cloud-amd64",
        ];
        assert_eq!(
            newest(names.into_iter()).as_deref(),
            Some("linux-image-6.1.0-50-cloud-amd64")
        );
        let names = [
            "linux-image-6.12.9+deb12-cloud-amd64",
            "linux-image-6.12.95+deb12-cloud-amd64",
        ];
        assert_eq!(
            newest(names.into_iter()).as_deref(),
            Some("linux-image-6.12.95+deb12-cloud-amd64")
        );
        assert_eq!(newest([].into_iter()), None);
    }
}
