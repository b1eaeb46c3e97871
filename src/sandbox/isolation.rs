//! What keeps a function from the host beyond its namespaces: a user namespace per instance
//! with a uid/gid range of its own, and a seccomp filter.
//!
//! Every instance gets [`IDS_PER_INSTANCE`] ids starting at a base that no other live instance
//! uses: uid/gid 0 inside is an unprivileged, unmapped-elsewhere id on the host, so host files
//! keep their owners' protection, kernel per-user limits (`RLIMIT_NPROC`, inotify, …) are not
//! shared between instances, and capabilities reach only what the instance's namespace owns.
//! The default base (0x70000000) lies above the range systemd hands to containers
//! (0x80000–0x6FFFFFFF) and below 2^31.
//!
//! The seccomp filter follows Docker's default profile in spirit, as a deny list (everything
//! else is allowed, so no language runtime breaks on a syscall the list forgot): no mounts
//! or new mount API, no namespaces of their own (`unshare`/`clone` with `CLONE_NEWUSER`,
//! `setns`), no `AF_VSOCK` sockets (not namespaced), no `clone3` (`ENOSYS`, so libc falls back to `clone`, whose flags the filter can
//! read), no `bpf`, `perf_event_open`, `io_uring`, `userfaultfd`, kexec, module loading, keyrings,
//! clock or swap changes, `open_by_handle_at`, `syslog`, `acct`, `quotactl`, `iopl`/`ioperm`;
//! other architectures' syscalls kill the process and x32 numbers get `ENOSYS`. The
//! filter is compiled once per supervisor with `seccompiler` (rust-vmm).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};

/// Ids each instance owns (uid and gid alike): 0 … 65535 inside, like a full Linux system.
pub const IDS_PER_INSTANCE: u32 = 65536;

/// Default first host id of the instances' ranges.
pub const DEFAULT_ID_BASE: u32 = 0x7000_0000;

/// The highest host id fcsup hands out (exclusive): systemd's "foreign" range starts there.
const ID_CEILING: u32 = 0x7FFE_0000;

/// How instances are isolated; fixed for a supervisor's life.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    /// Id ranges for a user namespace per instance; `None` runs functions as host root
    /// (`--insecure-instances`).
    pub ids: Option<Arc<IdRanges>>,
    /// The seccomp filter; `None` runs functions without one (`--insecure-instances`).
    pub seccomp: Option<Arc<Filters>>,
    /// The small program an instance's init re-executes to leave the supervisor's memory
    /// (`fcsup-init` next to this executable, opened once); without it the init re-executes
    /// fcsup itself (`fcsup instance-init`), which costs more at every start.
    pub init_program: Option<Arc<OwnedFd>>,
}

impl Isolation {
    /// Full isolation with id ranges from `base`.
    pub fn full(base: u32) -> io::Result<Isolation> {
        let init_program = init_program();
        Ok(Isolation { ids: Some(Arc::new(IdRanges::new(base)?)), seccomp: Some(Arc::new(Filters::build()?)), init_program })
    }

    /// No user namespace and no seccomp filter.
    pub fn none() -> Isolation {
        Isolation { init_program: init_program(), ..Isolation::default() }
    }
}

/// `fcsup-init` next to the running executable, as a sealed private copy (a memfd) of mode
/// 0711: a program the instance cannot read is not dumpable from its first instruction, so the
/// function cannot ptrace its init in the moment between the init's execve and the init's own
/// `PR_SET_DUMPABLE` (an installed copy of mode 0755 would leave that window open).
fn init_program() -> Option<Arc<OwnedFd>> {
    let path = std::env::current_exe().ok()?.with_file_name("fcsup-init");
    match private_copy(&path) {
        Ok(fd) => Some(Arc::new(fd)),
        Err(e) => {
            tracing::warn!("cannot use {} ({e}): each instance's init re-executes fcsup itself instead (slower starts)", path.display());
            None
        }
    }
}

fn private_copy(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let bytes = std::fs::read(path)?;
    const MFD_EXEC: libc::c_uint = 0x10;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a static name; MFD_EXEC is refused by kernels before 6.3,
    // which make every memfd executable anyway.
    let mut fd = unsafe { libc::memfd_create(c"fcsup-init".as_ptr(), flags | MFD_EXEC) };
    if fd < 0 {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(c"fcsup-init".as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, &bytes)?;
    let raw = file.as_raw_fd();
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fchmod and fcntl on our fd with integer arguments.
    if unsafe { libc::fchmod(raw, 0o711) } != 0 || unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// The free id ranges, handed out oldest-freed first so a range is reused as late as possible.
#[derive(Debug)]
pub struct IdRanges {
    base: u32,
    free: Mutex<VecDeque<u32>>,
}

impl IdRanges {
    /// Ranges of [`IDS_PER_INSTANCE`] ids from `base` up to the ceiling.
    pub fn new(base: u32) -> io::Result<IdRanges> {
        let slots = ID_CEILING.saturating_sub(base) / IDS_PER_INSTANCE;
        if base == 0 || slots == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no room for instance id ranges from {base} below {ID_CEILING}")));
        }
        Ok(IdRanges { base, free: Mutex::new((0..slots).collect()) })
    }

    /// A range of its own for one instance, returned when the value is dropped.
    pub fn take(self: &Arc<Self>) -> io::Result<IdRange> {
        let slot = self.free.lock().expect("id ranges").pop_front().ok_or_else(|| io::Error::other("every instance id range is in use"))?;
        Ok(IdRange { first: self.base + slot * IDS_PER_INSTANCE, slot, owner: self.clone() })
    }
}

/// One instance's host ids: `first` … `first + IDS_PER_INSTANCE - 1`.
#[derive(Debug)]
pub struct IdRange {
    /// The host id that is 0 inside.
    pub first: u32,
    slot: u32,
    owner: Arc<IdRanges>,
}

impl IdRange {
    /// Writes `pid`'s uid and gid maps (0 inside is `first` outside).
    pub fn write_maps(&self, pid: i32) -> io::Result<()> {
        let line = format!("0 {} {IDS_PER_INSTANCE}\n", self.first);
        for map in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{map}"), &line).map_err(|e| io::Error::new(e.kind(), format!("write {map} of {pid}: {e}")))?;
        }
        Ok(())
    }
}

impl Drop for IdRange {
    fn drop(&mut self) {
        self.owner.free.lock().expect("id ranges").push_back(self.slot);
    }
}

/// The compiled seccomp program.
#[derive(Debug)]
pub struct Filters {
    program: BpfProgram,
}

/// Syscalls refused with `EPERM` whatever their arguments.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_syslog,
    libc::SYS_open_by_handle_at,
];

/// Old or x86-only syscalls refused the same way (absent from newer architectures' tables).
#[cfg(target_arch = "x86_64")]
const DENIED_X86: &[i64] = &[libc::SYS_nfsservctl, libc::SYS_uselib, libc::SYS__sysctl, libc::SYS_sysfs, libc::SYS_ustat, libc::SYS_iopl, libc::SYS_ioperm];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_X86: &[i64] = &[];

/// Syscall numbers at or above this are the x32 ABI's.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

impl Filters {
    /// Compiles the filter for this architecture.
    pub fn build() -> io::Result<Filters> {
        let err = |e: seccompiler::Error| io::Error::other(format!("seccomp filter: {e}"));
        let arch = std::env::consts::ARCH.try_into().map_err(|e: seccompiler::BackendError| io::Error::other(format!("seccomp filter: {e}")))?;
        let newuser = || -> Result<Vec<SeccompRule>, seccompiler::Error> {
            let flag = libc::CLONE_NEWUSER as u64;
            Ok(vec![SeccompRule::new(vec![SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)?])?])
        };
        let mut deny: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().chain(DENIED_X86).map(|n| (*n, Vec::new())).collect();
        deny.insert(libc::SYS_unshare, newuser().map_err(err)?);
        deny.insert(libc::SYS_clone, newuser().map_err(err)?);
        // vsock addresses are not namespaced: a function could hold the host's ports or talk
        // to the hypervisor (Docker's profile refuses AF_VSOCK too).
        let vsock = || -> Result<Vec<SeccompRule>, seccompiler::Error> {
            Ok(vec![SeccompRule::new(vec![SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::AF_VSOCK as u64)?])?])
        };
        deny.insert(libc::SYS_socket, vsock().map_err(err)?);
        let eperm = SeccompFilter::new(deny, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(|e| err(e.into()))?;
        let eperm: BpfProgram = eperm.try_into().map_err(|e: seccompiler::BackendError| err(e.into()))?;
        // One program (each filter attached costs the kernel a pass over every syscall number):
        // the ENOSYS cases first, then seccompiler's program, whose jumps are all relative.
        let mut program = enosys_prefix();
        program.extend(eperm);
        Ok(Filters { program })
    }

    /// The program.
    pub fn program(&self) -> &[seccompiler::sock_filter] {
        &self.program
    }
}

/// `ENOSYS` for `clone3` (its flags live in memory the filter cannot read; libc then falls
/// back to `clone`, whose flags it can) and, on x86-64, for every x32 syscall number (same
/// audit arch as x86-64, so the architecture check would let them through under other
/// numbers).
fn enosys_prefix() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let x32 = if cfg!(target_arch = "x86_64") { X32_SYSCALL_BIT } else { u32::MAX };
    vec![
        ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        ins(JGE_K, 2, 0, x32),
        ins(JEQ_K, 1, 0, libc::SYS_clone3 as u32),
        ins(0x05, 0, 0, 1), // BPF_JMP | BPF_JA: over the return
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_distinct_and_reused_last() {
        let ids = Arc::new(IdRanges::new(DEFAULT_ID_BASE).unwrap());
        let a = ids.take().unwrap();
        let b = ids.take().unwrap();
        assert_eq!(a.first, DEFAULT_ID_BASE);
        assert_eq!(b.first, DEFAULT_ID_BASE + IDS_PER_INSTANCE);
        let first = a.first;
        drop(a);
        let c = ids.take().unwrap();
        assert_ne!(c.first, first, "a freed range goes to the back of the queue");
        assert!(c.first + IDS_PER_INSTANCE <= ID_CEILING);
    }

    #[test]
    fn no_room_is_an_error() {
        assert!(IdRanges::new(ID_CEILING).is_err());
        assert!(IdRanges::new(0).is_err());
    }

    #[test]
    fn filter_compiles() {
        let f = Filters::build().unwrap();
        assert!(f.program().len() > 10 && f.program().len() < 4096);
    }
}
