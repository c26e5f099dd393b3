//! Fuzzes the HTTP/2 parser (framing, HPACK, stream pairing): arbitrary bytes as the two
//! directions of one connection (the input layout is `ztrace::protocols::fuzz`'s). The parser
//! must not panic nor grow without bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztrace::protocols::fuzz::feed(&ztrace::protocols::http2::Http2, data));
