//! What TLS implementation an ELF file carries, from its symbols and sections alone (read
//! lazily through the page cache: a 100 MB executable costs its symbol tables, not its size).

use std::path::Path;

use object::{Object, ObjectSymbol, ReadCache};

use super::go::GoTls;

/// The TLS implementation found in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsLib {
    /// OpenSSL's (or BoringSSL's) read/write functions are defined here; the list names those
    /// present, out of `SSL_read`, `SSL_write`, `SSL_read_ex`, `SSL_write_ex` and `SSL_set_fd`.
    OpenSsl { functions: Vec<&'static str> },
    /// A Go program (`.go.buildinfo`) with `crypto/tls`.
    Go(GoTls),
    /// Nothing ztrace can probe.
    None,
}

/// The OpenSSL functions probed, in attach order.
pub const OPENSSL_FUNCTIONS: [&str; 5] = [
    "SSL_read",
    "SSL_write",
    "SSL_read_ex",
    "SSL_write_ex",
    "SSL_set_fd",
];

/// Looks at the symbols of the ELF file at `path`.
pub fn inspect(path: &Path) -> std::io::Result<TlsLib> {
    let file = std::fs::File::open(path)?;
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Ok(TlsLib::None);
    };
    Ok(classify(&elf))
}

/// Classifies a parsed object file.
pub fn classify<'data, O: Object<'data>>(elf: &O) -> TlsLib {
    let mut functions = Vec::new();
    for sym in elf.dynamic_symbols().chain(elf.symbols()) {
        if sym.is_undefined() || !sym.is_definition() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        // Versioned names (`SSL_read@@OPENSSL_3.0.0`) appear bare in the dynamic table.
        let name = name.split('@').next().unwrap_or(name);
        if let Some(f) = OPENSSL_FUNCTIONS.iter().find(|f| **f == name) {
            if !functions.contains(f) {
                functions.push(*f);
            }
        }
    }
    // The plain forms are what every OpenSSL version has; without both it is not OpenSSL.
    if functions.contains(&"SSL_read") && functions.contains(&"SSL_write") {
        functions.sort_by_key(|f| OPENSSL_FUNCTIONS.iter().position(|x| x == f));
        return TlsLib::OpenSsl { functions };
    }
    if elf.section_by_name(".go.buildinfo").is_some() {
        if let Some(go) = super::go::inspect(elf) {
            return TlsLib::Go(go);
        }
    }
    TlsLib::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_test_binary_is_not_a_tls_library() {
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(inspect(&exe).expect("inspect"), TlsLib::None);
    }

    #[test]
    fn a_file_that_is_not_elf_is_nothing() {
        let dir = std::env::temp_dir().join(format!("ztrace-elf-{}", std::process::id()));
        std::fs::write(&dir, b"#!/bin/sh\necho hi\n").expect("write");
        assert_eq!(inspect(&dir).expect("inspect"), TlsLib::None);
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn system_libssl_exports_the_four_functions_when_installed() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !path.exists() {
            return; // not every build machine has OpenSSL 3
        }
        match inspect(path).expect("inspect") {
            TlsLib::OpenSsl { functions } => assert_eq!(functions, OPENSSL_FUNCTIONS.to_vec()),
            other => panic!("libssl.so.3 classified as {other:?}"),
        }
    }
}
