//! Which processes are traced: everything but the agent itself, or, when the user asked for
//! `--pid`/`--exe`, only the processes in `PID_ALLOW` or whose leader's comm is in `COMM_ALLOW`;
//! with `--cgroup`, only processes of that cgroup (v2; its own members, not its descendants).

use aya_ebpf::helpers::generated::bpf_get_current_cgroup_id;

use crate::{
    config::settings,
    maps::{COMM_ALLOW, PID_ALLOW},
    sock::leader_comm,
};

/// True when events of process `tgid` are wanted.
#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    let s = settings();
    if tgid == s.agent_tgid {
        return false;
    }
    // SAFETY: the helper has no preconditions.
    if s.cgroup_id != 0 && unsafe { bpf_get_current_cgroup_id() } != s.cgroup_id {
        return false;
    }
    if s.filter_enabled == 0 {
        return true;
    }
    // SAFETY: values are only tested for presence.
    if unsafe { PID_ALLOW.get(&tgid) }.is_some() {
        return true;
    }
    let comm = leader_comm();
    // SAFETY: as above.
    unsafe { COMM_ALLOW.get(&comm) }.is_some()
}

/// True for the agent's own process (its connects are reported so it can ignore the other end).
#[inline(always)]
pub fn is_agent(tgid: u32) -> bool {
    tgid == settings().agent_tgid
}
