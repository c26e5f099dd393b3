#![no_std]
#![no_main]
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
#[tracepoint]
pub fn zt_probe(_ctx: TracePointContext) -> u32 { 0 }
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! { loop {} }
