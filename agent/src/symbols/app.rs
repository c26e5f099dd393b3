//! Which frame of a stack is "the application's": the innermost frame that is not the C
//! library or the dynamic loader, a language runtime or standard library, an HTTP/SQL client
//! library or a TLS library. The rule, also written in the README:
//!
//! 1. a frame without a function name is not the application's;
//! 2. a frame in a shared library installed under `/lib`, `/lib64`, `/usr/lib`, `/usr/lib64` or
//!    `/usr/libexec` (libc, ld.so, libssl, libpq, libstdc++, ...) is not;
//! 3. a frame whose function (leading `<`, `&`, `mut `, `dyn ` removed) starts with one of
//!    [`LIBRARY_PREFIXES`] is not (Go runtime and standard library, Rust `std`/`core`/`alloc`
//!    and the common async/HTTP/SQL crates, C runtime start-up functions);
//! 4. every other frame is.

use super::Frame;

/// Function-name prefixes of runtimes and client libraries.
pub const LIBRARY_PREFIXES: &[&str] = &[
    // Go runtime, standard library and common clients.
    "runtime.",
    "runtime/",
    "internal/",
    "syscall.",
    "net.",
    "net/",
    "crypto/",
    "bufio.",
    "io.",
    "os.",
    "sync.",
    "context.",
    "reflect.",
    "fmt.",
    "database/sql",
    "github.com/lib/pq",
    "github.com/jackc/pgx",
    "google.golang.org/grpc",
    "golang.org/x/net",
    // Rust standard library and common crates.
    "std::",
    "core::",
    "alloc::",
    "tokio::",
    "reqwest::",
    "hyper::",
    "hyper_util::",
    "h2::",
    "mio::",
    "futures",
    "tower::",
    "tonic::",
    "rustls::",
    "native_tls::",
    "openssl::",
    "postgres::",
    "tokio_postgres::",
    "sqlx",
    "__rust",
    "_start",
    "__libc_start",
    // C++ standard library.
    "std::__",
    "__gnu_cxx::",
];

const SYSTEM_LIB_DIRS: &[&str] = &[
    "/lib/",
    "/lib64/",
    "/usr/lib/",
    "/usr/lib64/",
    "/usr/libexec/",
];

fn strip_qualifiers(mut name: &str) -> &str {
    loop {
        let before = name;
        name = name.trim_start_matches(['<', '&', '(']);
        for q in ["mut ", "dyn ", "impl ", "const "] {
            if let Some(rest) = name.strip_prefix(q) {
                name = rest;
            }
        }
        if name == before {
            return name;
        }
    }
}

/// True when the frame belongs to the application (see the module doc).
pub fn is_app_frame(frame: &Frame) -> bool {
    let Some(function) = frame.function.as_deref() else {
        return false;
    };
    if SYSTEM_LIB_DIRS
        .iter()
        .any(|d| frame.module_path.starts_with(d))
        && frame.module_path.contains(".so")
    {
        return false;
    }
    let name = strip_qualifiers(function);
    !LIBRARY_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, module: &str) -> Frame {
        Frame {
            function: Some(function.into()),
            file: None,
            line: None,
            module_path: module.into(),
            inlined: false,
        }
    }

    #[test]
    fn the_rule() {
        assert!(!is_app_frame(&frame(
            "__GI___libc_write",
            "/usr/lib/x86_64-linux-gnu/libc.so.6"
        )));
        assert!(!is_app_frame(&frame(
            "std::io::Write::write_all",
            "/work/client"
        )));
        assert!(!is_app_frame(&frame(
            "<&std::net::tcp::TcpStream as std::io::Write>::write",
            "/work/client"
        )));
        assert!(!is_app_frame(&frame(
            "net/http.(*persistConn).writeLoop",
            "/work/goclient"
        )));
        assert!(!is_app_frame(&frame(
            "github.com/lib/pq.(*conn).send",
            "/work/goclient"
        )));
        assert!(!is_app_frame(&frame("runtime.goexit", "/work/goclient")));
        assert!(is_app_frame(&frame("main.fetchUser", "/work/goclient")));
        assert!(is_app_frame(&frame("fetch_orders", "/tmp/client")));
        assert!(is_app_frame(&frame("client::send_request", "/tmp/client")));
        assert!(is_app_frame(&frame(
            "<client::Api as client::Fetch>::fetch",
            "/tmp/client"
        )));
        assert!(is_app_frame(&frame("helper", "/opt/app/libmine.so")));
        let mut unknown = frame("x", "/tmp/a");
        unknown.function = None;
        assert!(!is_app_frame(&unknown));
    }
}
