//! HTTP/1.x: requests and responses rebuilt from the two byte streams of a connection.
//!
//! (To be written: see the module contract in the task description.)

/// True when `bytes` start like an HTTP/1.x request line (`GET /x HTTP/1.1`), possibly cut short.
pub fn looks_like_request(_bytes: &[u8]) -> bool {
    false
}

/// True when `bytes` start like an HTTP/1.x status line (`HTTP/1.1 200`), possibly cut short.
pub fn looks_like_response(_bytes: &[u8]) -> bool {
    false
}
