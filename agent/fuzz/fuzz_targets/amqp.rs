//! Fuzzes the AMQP 0-9-1 parser: arbitrary bytes as the two directions of one connection (the
//! input layout is `ztrace::protocols::fuzz`'s). The parser must not panic nor grow without
//! bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztrace::protocols::fuzz::feed(&ztrace::protocols::amqp::Amqp, data));
