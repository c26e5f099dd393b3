//! [`Backend`]: an OTLP/HTTP endpoint on a fixed loopback port that a test or the bench turns up,
//! down and silent, to see what an exporter does when its backend fails. Up, it reads each
//! request whole and answers `200` without decoding it (the cheapest peer an exporter can have),
//! counting requests and body bytes. Down, nothing listens: connections are refused, and the
//! connections it had are shut. Silent, it accepts connections and never reads or answers them
//! (a hung collector, a black-holing proxy).
//!
//! Also [`scrape`]: the agent's `/metrics` page (`--health`) as numbers by name.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::free_port;

/// What the endpoint does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers every export request with `200`.
    Up,
    /// Nothing listens on the port.
    Down,
    /// Accepts connections, never reads, never answers.
    Silent,
}

/// The endpoint; its threads stop when it is dropped.
pub struct Backend {
    pub port: u16,
    mode: Mode,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    /// The listener's thread and its stop flag, while one listens.
    listening: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// Every accepted connection, shut when the mode changes.
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Backend {
    /// Up, on a free port.
    pub fn start() -> Backend {
        let mut backend = Backend {
            port: free_port(),
            mode: Mode::Down,
            requests: Arc::default(),
            bytes: Arc::default(),
            listening: None,
            conns: Arc::default(),
        };
        backend.set(Mode::Up);
        backend
    }

    /// `http://127.0.0.1:PORT` (give `--otlp-protocol http/protobuf`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Export requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Body bytes of the requests answered so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Switches to `mode`: the connections of the previous mode are shut, and the port listens
    /// again (same port) unless `mode` is [`Mode::Down`].
    pub fn set(&mut self, mode: Mode) {
        self.stop_listening();
        for conn in self.conns.lock().expect("conns").drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        self.mode = mode;
        if mode == Mode::Down {
            return;
        }
        let listener = bind_again(self.port);
        let stop = Arc::new(AtomicBool::new(false));
        let (requests, bytes, conns, flag) = (
            self.requests.clone(),
            self.bytes.clone(),
            self.conns.clone(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(clone) = stream.try_clone() {
                    conns.lock().expect("conns").push(clone);
                }
                if mode == Mode::Up {
                    let (r, b) = (requests.clone(), bytes.clone());
                    std::thread::spawn(move || {
                        let _ = answer(stream, &r, &b);
                    });
                }
                // Silent: the stream is kept (in `conns`), never read.
            }
        });
        self.listening = Some((stop, thread));
    }

    fn stop_listening(&mut self) {
        if let Some((stop, thread)) = self.listening.take() {
            stop.store(true, Ordering::Relaxed);
            // Wake the accept loop so that it sees the flag and drops the listener.
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], self.port)),
                Duration::from_secs(1),
            );
            let _ = thread.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.set(Mode::Down);
    }
}

/// Binds the port again (the previous listener just closed; connections may linger in
/// TIME_WAIT, which `SO_REUSEADDR`, set by std, allows).
fn bind_again(port: u16) -> TcpListener {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..50 {
        if let Ok(listener) = TcpListener::bind(addr) {
            return listener;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cannot listen on {addr} again");
}

/// Keep-alive HTTP/1.1: each request's head, then `Content-Length` bytes of body, then `200`.
fn answer(stream: TcpStream, requests: &AtomicU64, bytes: &AtomicU64) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        requests.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(length as u64, Ordering::Relaxed);
        writer.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
    }
}

/// The agent's `/metrics` (`--health ADDR`) as `name → value`; labelled series keep their labels
/// in the name (`ztrace_table_entries{table="connections"}`). `None` if it does not answer.
pub fn scrape(health: SocketAddr) -> Option<HashMap<String, f64>> {
    let mut stream = TcpStream::connect_timeout(&health, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {health}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut page = String::new();
    stream.read_to_string(&mut page).ok()?;
    let (head, body) = page.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect(),
    )
}
