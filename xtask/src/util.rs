//! Small helpers shared by the subcommands: where the repository is, how a command is shown and
//! run, and whether we are root. No subcommand logic lives here.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Prints one progress line, prefixed so it stands out among cargo's own output.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        println!("xtask: {}", format_args!($($arg)*));
        let _ = std::io::stdout().flush();
    }};
}
pub(crate) use say;

/// The repository root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// The cargo target directory of the main workspace (`CARGO_TARGET_DIR` if set, else `target/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// The cargo that runs xtask (the `CARGO` cargo sets for `cargo run`), else `cargo` on PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command that needs root: as is when we are root, else through `sudo`.
pub fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

/// How a command is shown in progress lines and errors: program and arguments, shell-like.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let mut line = parts.join(" ");
    if let Some(dir) = cmd.get_current_dir() {
        line = format!("(cd {} && {line})", dir.display());
    }
    line
}

/// Runs a command with inherited stdio; an exit status other than 0 is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    say!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a command silently and returns its stdout if it exited 0; `None` if it could not start or failed.
pub fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where a program is on PATH, if it is.
pub fn which(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Environment variables that `cargo xtask` (a stable `cargo run`) passes down and that would make
/// a nested cargo build the wrong thing: force the stable toolchain, another target directory or
/// target, other compiler flags, or pretend to be a build script of the outer package.
pub fn is_outer_cargo_env(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_BOOTSTRAP",
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_RUSTC",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTDOC",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "OUT_DIR",
    ];
    EXACT.contains(&key)
        || key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_CFG_")
        || key.starts_with("CARGO_FEATURE_")
        || (key.starts_with("CARGO_TARGET_") && key.ends_with("_RUSTFLAGS"))
        || (key.starts_with("CARGO_TARGET_") && key.ends_with("_LINKER"))
}

/// Removes [`is_outer_cargo_env`] variables from a child command's environment.
pub fn clear_outer_cargo_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            if is_outer_cargo_env(key) {
                cmd.env_remove(key);
            }
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_cargo_env_is_recognised() {
        for key in [
            "RUSTUP_TOOLCHAIN",
            "RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_PKG_NAME",
            "CARGO",
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
        ] {
            assert!(is_outer_cargo_env(key), "{key}");
        }
        for key in [
            "CARGO_HOME",
            "RUSTUP_HOME",
            "PATH",
            "CARGO_NET_OFFLINE",
            "CARGO_TERM_COLOR",
            "HOME",
        ] {
            assert!(!is_outer_cargo_env(key), "{key}");
        }
    }

    #[test]
    fn repo_root_holds_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("ebpf").is_dir());
    }
}

/// A venv of Debian's python3 under the target directory (`target/NAME`) holding `packages`
/// (from PyPI), made or completed only when `check` (Python code, typically imports) fails in
/// it. Returns the venv's python.
pub fn python_venv(name: &str, packages: &[&str], check: &str) -> Result<PathBuf> {
    let venv = target_dir().join(name);
    let python = venv.join("bin/python");
    if output_of(Command::new(&python).args(["-c", check])).is_some() {
        return Ok(python);
    }
    if output_of(Command::new(&python).arg("--version")).is_none() {
        say!("creating the venv {}...", venv.display());
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
    }
    say!(
        "installing {} into {}...",
        packages.join(" "),
        venv.display()
    );
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages))?;
    output_of(Command::new(&python).args(["-c", check]))
        .with_context(|| format!("the venv {} still cannot `{check}`", venv.display()))?;
    Ok(python)
}
