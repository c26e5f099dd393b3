//! The trace store's faults while tracing (issue 19, "Store"): a disk that fills up (a 16 MiB
//! tmpfs as `--data-dir`, then a file that takes the rest) and a database file damaged under the
//! running agent. Each time: capture goes on (the printed spans of requests made after the fault
//! arrive), nothing crashes (the agent answers and stops cleanly with its stats), and the viewer
//! says what is wrong (`/api/stats` `store.problem`, which the pages show in a banner, or the
//! error of the query that failed). A full disk, once freed, is written again.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use ztrace_e2e::clients::{self, get_local as get};
use ztrace_e2e::servers::Server;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{free_port, wait_until, TempDir, Ztrace};

/// How long the store may take to notice (a batch every second or so) and recover.
const STORE_TIMEOUT: Duration = Duration::from_secs(60);

fn start(ui: u16, data: &Path) -> Ztrace {
    let ui = format!("127.0.0.1:{ui}");
    let data = data.display().to_string();
    // Only the test's own programs: the store must not fill with other traffic of the machine.
    Ztrace::start(&[
        "--print=json",
        "--ui",
        &ui,
        "--data-dir",
        &data,
        "--exe",
        "python3",
        // The tests' venv interpreter (`$ZTRACE_PYTHON`, as `cargo xtask test` sets it) runs as `python`.
        "--exe",
        "python",
        "--exe",
        "curl",
    ])
}

fn stats(ui: u16) -> Value {
    let (status, body) = get(ui, "/api/stats");
    assert_eq!(status, 200, "/api/stats: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/stats: {e}: {body}"))
}

/// A request to a path of its own; waits for its printed server span (capture goes on).
fn request_is_traced(ztrace: &mut Ztrace, server: &Server, path: &str) {
    let run = clients::curl(&[server.url(path)]);
    assert_eq!(run.transfers[0].0, 404, "{path}");
    let port = server.port;
    let url_path = path.to_owned();
    ztrace.wait_for_n_spans(
        1,
        |s| {
            s.is_server()
                && s.server_port() == Some(port)
                && s.attr_str("url.path") == Some(url_path.as_str())
        },
        SPAN_TIMEOUT,
    );
}

/// A request to a path of its own, and its trace id (from the printed server span).
fn trace_of(ztrace: &mut Ztrace, server: &Server, path: &str) -> String {
    let _ = clients::curl(&[server.url(path)]);
    let port = server.port;
    let url_path = path.to_owned();
    let span = ztrace.wait_for_n_spans(
        1,
        |s| {
            s.is_server()
                && s.server_port() == Some(port)
                && s.attr_str("url.path") == Some(url_path.as_str())
        },
        SPAN_TIMEOUT,
    );
    span[0].trace_id().expect("trace id").to_owned()
}

/// Some traffic, for the store to write (a failed request, on a busy machine, is no matter).
fn traffic(server: &Server, n: usize) {
    let urls: Vec<String> = (0..n).map(|i| server.url(&format!("/load/{i}"))).collect();
    let mut curl = Command::new("curl");
    curl.args(["-s", "--max-time", "10"]);
    for url in &urls {
        curl.args(["-o", "/dev/null", url]);
    }
    let _ = curl.status();
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    written
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_full_disk_stops_the_store_not_capture_and_is_written_again_once_freed() {
    let server = Server::python_http("127.0.0.1");
    let dir = TempDir::new("store-full");
    let data = dir.join("data");
    let _tmpfs = Tmpfs::mount(&data, "16m");
    let ui = free_port();
    let mut ztrace = start(ui, &data);
    request_is_traced(&mut ztrace, &server, "/before-full");
    wait_until(STORE_TIMEOUT, || {
        (stats(ui)["counters"]["store_spans_written"].as_u64() > Some(0)).then_some(())
    })
    .expect("the store writes while there is room");

    let filler = data.join("filler");
    let filled = fill(&filler);
    // Writes fail once SQLite needs a page it cannot get: traffic until one does.
    let problem = wait_until(STORE_TIMEOUT, || {
        traffic(&server, 20);
        let stats = stats(ui);
        let problem = &stats["store"]["problem"];
        (!problem.is_null()).then(|| problem.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "no store problem reported with the disk full: {}",
            stats(ui)
        )
    });
    let message = problem["message"].as_str().unwrap_or_default().to_owned();
    eprintln!("disk full ({filled} bytes of filler): /api/stats store.problem = {problem}");
    assert!(
        message.contains("full"),
        "the problem says the disk is full: {problem}"
    );
    assert!(problem["lost_spans"].as_u64() > Some(0), "{problem}");
    let counters = stats(ui)["counters"].clone();
    assert!(
        counters["store_write_errors"].as_u64() > Some(0),
        "{counters}"
    );

    // Capture goes on, and the viewer still reads what was stored.
    request_is_traced(&mut ztrace, &server, "/while-full");
    let (status, body) = get(ui, "/api/traces?limit=5");
    assert_eq!(
        status, 200,
        "the list still answers with the disk full: {body}"
    );

    // Freed: the writer succeeds again by itself.
    std::fs::remove_file(&filler).expect("remove filler");
    let written = counters["store_spans_written"].as_u64().unwrap_or(0);
    wait_until(STORE_TIMEOUT, || {
        traffic(&server, 5);
        let stats = stats(ui);
        (stats["store"]["problem"].is_null()
            && stats["counters"]["store_spans_written"].as_u64() > Some(written))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("the store was not written again once freed: {}", stats(ui)));
    let stopped = ztrace.stop();
    let stats = stopped
        .stats
        .expect("ztrace stats: the agent stopped cleanly");
    eprintln!(
        "disk full then freed: store_spans_written={} store_write_errors={} store_dropped={}",
        stats["store_spans_written"], stats["store_write_errors"], stats["store_dropped"]
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_database_damaged_while_tracing_is_reported_and_capture_goes_on() {
    let server = Server::python_http("127.0.0.1");
    let data = TempDir::new("store-damaged");
    let ui = free_port();
    let mut ztrace = start(ui, data.path());
    request_is_traced(&mut ztrace, &server, "/before-damage");
    wait_until(STORE_TIMEOUT, || {
        (stats(ui)["counters"]["store_spans_written"].as_u64() > Some(0)).then_some(())
    })
    .expect("the store writes");

    let early = trace_of(&mut ztrace, &server, "/early");
    // Enough traces that the early ones leave SQLite's caches and the write-ahead log.
    for _ in 0..40 {
        traffic(&server, 50);
    }
    // Garbage over the file after its first page, in place (the agent's connections keep it
    // open; page 1 is left alone: a checkpoint would write it back from the log anyway).
    let db = data.join("ztrace.db");
    let len = std::fs::metadata(&db).expect("ztrace.db").len();
    {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .expect("open ztrace.db");
        file.seek(SeekFrom::Start(4096)).expect("seek");
        file.write_all(&b"damaged by the test ".repeat((len as usize - 4096) / 20))
            .expect("overwrite ztrace.db");
    }
    eprintln!("overwrote {} bytes of ztrace.db", len - 4096);

    // The viewer says what is wrong: the writer's problem (it stays: the file is damaged), or
    // the viewer's own read failing.
    let said = wait_until(STORE_TIMEOUT, || {
        traffic(&server, 10);
        // What a user looking at older traces asks for: the trace, the services, the list.
        for path in [
            format!("/api/traces/{early}"),
            "/api/services?minutes=60".to_owned(),
            "/api/traces?since=1h&limit=1000".to_owned(),
        ] {
            let (status, body) = get(ui, &path);
            if status == 500 {
                eprintln!("GET {path}: {status} {body}");
            }
        }
        let stats = stats(ui);
        if let Some(message) = stats["store"]["problem"]["message"].as_str() {
            assert_eq!(stats["store"]["problem"]["damaged"], true, "{stats}");
            return Some(format!("/api/stats store.problem: {message}"));
        }
        stats["store"]["read_error"]
            .as_str()
            .map(|e| format!("/api/stats store.read_error: {e}"))
    })
    .unwrap_or_else(|| panic!("nothing says the store is damaged: {}", stats(ui)));
    eprintln!("damaged database: {said}");
    assert!(
        said.contains("malformed") || said.contains("not a database") || said.contains("corrupt"),
        "the words say the file is damaged: {said}"
    );

    // Capture goes on; the agent stops cleanly.
    request_is_traced(&mut ztrace, &server, "/after-damage");
    let stopped = ztrace.stop();
    let stats = stopped
        .stats
        .expect("ztrace stats: the agent stopped cleanly");
    eprintln!(
        "damaged: store_spans_written={} store_write_errors={} spans_created={}",
        stats["store_spans_written"], stats["store_write_errors"], stats["spans_created"]
    );
}
