//! Fuzzes the Redis (RESP2/RESP3) parser: arbitrary bytes as the two directions of one
//! connection (the input layout is `ztrace::protocols::fuzz`'s). The parser must not panic nor
//! grow without bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztrace::protocols::fuzz::feed(&ztrace::protocols::redis::Redis, data));
