//! Globals the agent sets at load time (`EbpfLoader::set_global`): kernel struct offsets and
//! run-time settings. Read with `read_volatile` so the compiler cannot fold the zero defaults.

use ztrace_common::{KernelOffsets, Settings};

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_struct_files: 0,
    task_struct_mm: 0,
    task_struct_group_leader: 0,
    task_struct_comm: 0,
    files_struct_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_f_inode: 0,
    file_private_data: 0,
    inode_i_mode: 0,
    socket_type: 0,
    socket_sk: 0,
    sock_common_skc_family: 0,
    sock_common_skc_daddr: 0,
    sock_common_skc_rcv_saddr: 0,
    sock_common_skc_dport: 0,
    sock_common_skc_num: 0,
    sock_common_skc_v6_daddr: 0,
    sock_common_skc_v6_rcv_saddr: 0,
    sock_sk_protocol: 0,
    task_struct_thread_fsbase: 0,
};

#[unsafe(no_mangle)]
static SETTINGS: Settings =
    Settings { agent_tgid: 0, capture_bytes: 4096, filter_enabled: 0, propagate: 0, cgroup_id: 0 };

#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    // SAFETY: OFFSETS is a plain static; read_volatile of it is always valid. Returning a
    // reference keeps the loads lazy, one per field used.
    unsafe { &*core::ptr::read_volatile(&&OFFSETS) }
}

#[inline(always)]
pub fn settings() -> Settings {
    // SAFETY: SETTINGS is a plain static of a Copy type.
    unsafe { core::ptr::read_volatile(&SETTINGS) }
}
