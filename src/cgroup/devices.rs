//! The device cgroup: which device nodes an instance may open (`r`, `w`) or create (`m`).
//!
//! On cgroup2 this is a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the instance's
//! cgroup; on hybrid hosts the v1 `devices` controller gets the same rules as
//! `devices.deny`/`devices.allow` lines (the kernel checks both).
//!
//! **Why the program is hand-assembled** (as runc's `devicefilter.go` and crun's `ebpf.c`
//! do) rather than built with aya or libbpf: both are made to load compiled ELF objects (aya's
//! `CgroupDevice` needs an eBPF crate built with bpf-linker or nightly; libbpf-rs and youki's
//! libbpf-sys need a C build with libelf), while this program is a straight line of compares
//! generated at run time from the rules: about 100 lines of emitter and four raw `bpf(2)`
//! calls (`sandbox::sys`) against 25–90 crates (`notes/cgroups.md` §4).
//!
//! **Semantics, the same as runc's.** The rules are applied in order the way cgroup v1 applies
//! writes to `devices.allow`/`devices.deny` (runc's `devices/devices_emulator.go`): starting
//! from "deny everything", an `a` rule resets to allow-all or deny-all, an allow adds access to
//! an exact (type, major, minor) entry and a deny takes it away (a deny that would punch a hole
//! into a wildcard entry is refused, as v1 refuses it). Later rules therefore win over earlier
//! ones. The result, a default plus entries that all have the opposite action, is sorted by
//! (major, minor, type) with `*` first and emitted as one compare block per entry; the first
//! block that matches returns, and the program ends with the default. Since every block has the
//! same action, the order of blocks cannot change a verdict. For the same rules this emits the
//! very instructions runc emits (the golden tests below are runc's own, in its notation).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;

use crate::sandbox::sys::{self, BpfInsn};

/// Errors of the device cgroup.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A rule could not be parsed.
    #[error("invalid device rule {rule:?}: {why}")]
    Parse {
        /// The text.
        rule: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A deny rule would punch a hole into a wildcard allow (cgroup v1 refuses it too).
    #[error("device rule {rule} cannot be applied: it would punch a hole into the wildcard rule {wildcard}")]
    Hole {
        /// The deny (or allow, in allow-all mode) rule.
        rule: String,
        /// The wildcard entry it overlaps.
        wildcard: String,
    },
    /// The kernel refused the program; the verifier log says why.
    #[error("BPF_PROG_LOAD of the device program failed: {errno}; verifier log:\n{log}")]
    Load {
        /// The errno.
        errno: Errno,
        /// The verifier's log.
        log: String,
    },
    /// Attaching the program to the cgroup failed.
    #[error("BPF_PROG_ATTACH of the device program failed: {0}")]
    Attach(Errno),
    /// Querying a cgroup's programs failed.
    #[error("BPF_PROG_QUERY failed: {0}")]
    Query(Errno),
}

/// Result of the device cgroup.
pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// The type of device a rule is about (`a`, `b` or `c`). The order is runc's sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceKind {
    /// `a`: every device, whatever the numbers (resets the list, as in cgroup v1).
    Any,
    /// `b`: block devices.
    Block,
    /// `c`: character devices.
    Char,
}

impl DeviceKind {
    fn letter(self) -> char {
        match self {
            DeviceKind::Any => 'a',
            DeviceKind::Block => 'b',
            DeviceKind::Char => 'c',
        }
    }

    /// `BPF_DEVCG_DEV_*`.
    fn bpf_type(self) -> i32 {
        match self {
            DeviceKind::Block => 1,
            DeviceKind::Char => 2,
            DeviceKind::Any => 0,
        }
    }
}

/// Access bits, as the kernel numbers them (`BPF_DEVCG_ACC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Access(u8);

impl Access {
    /// `m`: mknod.
    pub const MKNOD: Access = Access(1);
    /// `r`: open for reading.
    pub const READ: Access = Access(2);
    /// `w`: open for writing.
    pub const WRITE: Access = Access(4);
    /// `rw`.
    pub const RW: Access = Access(6);
    /// `rwm`.
    pub const ALL: Access = Access(7);

    /// The kernel's bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn union(self, o: Access) -> Access {
        Access(self.0 | o.0)
    }

    fn intersects(self, o: Access) -> bool {
        self.0 & o.0 != 0
    }

    fn minus(self, o: Access) -> Access {
        Access(self.0 & !o.0)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, c) in [(Access::READ, 'r'), (Access::WRITE, 'w'), (Access::MKNOD, 'm')] {
            if self.intersects(bit) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Access {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut a = Access(0);
        for c in s.chars() {
            a = a.union(match c {
                'r' => Access::READ,
                'w' => Access::WRITE,
                'm' => Access::MKNOD,
                _ => return Err("access must be made of r, w and m"),
            });
        }
        if a.is_empty() {
            return Err("empty access");
        }
        Ok(a)
    }
}

/// One rule: allow or deny `access` to devices of `kind` with `major`:`minor` (`None` = `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceRule {
    /// Block, char, or any.
    pub kind: DeviceKind,
    /// The major number; `None` matches every major.
    pub major: Option<u32>,
    /// The minor number; `None` matches every minor.
    pub minor: Option<u32>,
    /// What is allowed or denied.
    pub access: Access,
    /// Allow (true) or deny (false).
    pub allow: bool,
}

impl DeviceRule {
    /// Allows `access` to the character device `major`:`minor`.
    pub fn allow_char(major: u32, minor: u32, access: Access) -> Self {
        DeviceRule { kind: DeviceKind::Char, major: Some(major), minor: Some(minor), access, allow: true }
    }

    /// Allows `access` to the block device `major`:`minor`.
    pub fn allow_block(major: u32, minor: u32, access: Access) -> Self {
        DeviceRule { kind: DeviceKind::Block, major: Some(major), minor: Some(minor), access, allow: true }
    }

    /// The same rule as a deny.
    pub fn deny(self) -> Self {
        DeviceRule { allow: false, ..self }
    }
}

/// The cgroup v1 `devices.list` form: `c 1:3 rwm`, `b *:* m`, `a` (the action is not part
/// of it: it is the file written to).
impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == DeviceKind::Any {
            return write!(f, "a");
        }
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        write!(f, "{} {}:{} {}", self.kind.letter(), num(self.major), num(self.minor), self.access)
    }
}

/// Parses the cgroup v1 / runc form `TYPE MAJOR:MINOR ACCESS` (`c 195:0 rw`, `b *:* m`,
/// `a`) as an allow rule; [`DeviceRule::deny`] turns it into a deny.
impl FromStr for DeviceRule {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self> {
        let err = |why| DeviceError::Parse { rule: s.to_string(), why };
        let mut words = s.split_whitespace();
        let kind = match words.next() {
            Some("a") => return Ok(DeviceRule { kind: DeviceKind::Any, major: None, minor: None, access: Access::ALL, allow: true }),
            Some("b") => DeviceKind::Block,
            Some("c") => DeviceKind::Char,
            _ => return Err(err("the type must be a, b or c")),
        };
        let (major, minor) = words.next().and_then(|n| n.split_once(':')).ok_or_else(|| err("expected MAJOR:MINOR"))?;
        let num = |n: &str| if n == "*" { Ok(None) } else { n.parse::<u32>().map(Some).map_err(|_| err("a number must be digits or *")) };
        let access = words.next().unwrap_or("rwm").parse::<Access>().map_err(err)?;
        if words.next().is_some() {
            return Err(err("trailing words"));
        }
        Ok(DeviceRule { kind, major: num(major)?, minor: num(minor)?, access, allow: true })
    }
}

/// An ordered list of rules over "deny everything"; see the module doc for how they combine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceRules {
    rules: Vec<DeviceRule>,
}

/// The default is runc's allow list ([`DeviceRules::runc_default`]), what every container
/// gets there, so that a caller that says nothing gets what runc would give.
impl Default for DeviceRules {
    fn default() -> Self {
        DeviceRules::runc_default()
    }
}

impl DeviceRules {
    /// No rule: every device denied.
    pub fn deny_all() -> Self {
        DeviceRules { rules: Vec::new() }
    }

    /// runc's default allow list (`specconv.AllowedDevices`, runc 1.4): mknod of any char or
    /// block device; `rwm` on null, random, full, tty, zero, urandom, the pts range (136:*),
    /// ptmx and tun, in runc's order.
    pub fn runc_default() -> Self {
        let any = |kind| DeviceRule { kind, major: None, minor: None, access: Access::MKNOD, allow: true };
        let mut rules = vec![any(DeviceKind::Char), any(DeviceKind::Block)];
        for (major, minor) in [(1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9)] {
            rules.push(DeviceRule::allow_char(major, minor, Access::ALL));
        }
        rules.push(DeviceRule { kind: DeviceKind::Char, major: Some(136), minor: None, access: Access::ALL, allow: true });
        rules.push(DeviceRule::allow_char(5, 2, Access::ALL));
        rules.push(DeviceRule::allow_char(10, 200, Access::ALL));
        DeviceRules { rules }
    }

    /// These rules followed by `granted` (which therefore win where they overlap).
    pub fn with_granted(&self, granted: &[DeviceRule]) -> Self {
        let mut rules = self.rules.clone();
        rules.extend_from_slice(granted);
        DeviceRules { rules }
    }

    /// Appends one rule.
    pub fn push(&mut self, rule: DeviceRule) {
        self.rules.push(rule);
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[DeviceRule] {
        &self.rules
    }

    /// What the rules amount to: the v1 emulation (see the module doc).
    pub fn effective(&self) -> Result<Effective> {
        let mut e = Effective { default_allow: false, entries: BTreeMap::new() };
        for r in &self.rules {
            if r.kind == DeviceKind::Any {
                e = Effective { default_allow: r.allow, entries: BTreeMap::new() };
                continue;
            }
            let key = (r.major, r.minor, r.kind);
            if r.allow != e.default_allow {
                // An exception to the default: add access.
                let old = e.entries.get(&key).copied().unwrap_or_default();
                e.entries.insert(key, old.union(r.access));
                continue;
            }
            // Same action as the default: take access away from an exception, refusing to
            // punch a hole into a wildcard one.
            for partial in [(None, r.minor, r.kind), (r.major, None, r.kind), (None, None, r.kind)] {
                if partial == key {
                    continue;
                }
                if let Some(a) = e.entries.get(&partial).filter(|a| a.intersects(r.access)) {
                    let w = DeviceRule { kind: r.kind, major: partial.0, minor: partial.1, access: *a, allow: !r.allow };
                    return Err(DeviceError::Hole { rule: r.to_string(), wildcard: w.to_string() });
                }
            }
            if let Some(old) = e.entries.get(&key).copied() {
                let left = old.minus(r.access);
                if left.is_empty() {
                    e.entries.remove(&key);
                } else {
                    e.entries.insert(key, left);
                }
            }
        }
        Ok(e)
    }
}

/// The rules reduced to a default and its exceptions: the form both the BPF program and the
/// v1 lines are made from, and the key of the program cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Effective {
    /// Whether a device no entry names is allowed.
    pub default_allow: bool,
    /// (major, minor, type) → access, every entry with the action opposite to the default; the
    /// map's order is runc's (`*` first, then by number, then `b` before `c`).
    entries: BTreeMap<(Option<u32>, Option<u32>, DeviceKind), Access>,
}

impl Effective {
    /// The exceptions as rules, in runc's order.
    pub fn entries(&self) -> impl Iterator<Item = DeviceRule> + '_ {
        self.entries.iter().map(|(&(major, minor, kind), &access)| DeviceRule { kind, major, minor, access, allow: !self.default_allow })
    }

    /// The cgroup v1 writes that set these rules on a fresh cgroup: `(file, line)`, the first
    /// one resetting everything (`devices.deny` `a` for an allow list).
    pub fn v1_writes(&self) -> Vec<(&'static str, String)> {
        let (reset, except) = if self.default_allow { ("devices.allow", "devices.deny") } else { ("devices.deny", "devices.allow") };
        let mut out = vec![(reset, "a".to_string())];
        out.extend(self.entries().map(|r| (except, r.to_string())));
        out
    }

    /// The `BPF_PROG_TYPE_CGROUP_DEVICE` program: runc's `devicefilter.go` layout, instruction
    /// for instruction.
    pub fn program(&self) -> Vec<BpfInsn> {
        // struct bpf_cgroup_dev_ctx { u32 access_type (type | access << 16); u32 major; u32 minor; }
        let mut p = vec![
            ldx_w(R2, R1, 0),
            alu32_imm(BPF_AND, R2, 0xFFFF), // r2 = type
            ldx_w(R3, R1, 0),
            alu32_imm(BPF_RSH, R3, 16), // r3 = access
            ldx_w(R4, R1, 4),           // r4 = major
            ldx_w(R5, R1, 8),           // r5 = minor
        ];
        for rule in self.entries() {
            // Each check jumps past the end of this block (to the next one) when it fails.
            let mut block: Vec<(BpfInsn, bool)> = vec![(jne_imm(R2, rule.kind.bpf_type()), true)];
            if rule.access != Access::ALL {
                // if (r3 & access) != r3: the request wants more than the rule gives.
                block.push((alu32_reg(BPF_MOV, R1, R3), false));
                block.push((alu32_imm(BPF_AND, R1, i32::from(rule.access.bits())), false));
                block.push((jne_reg(R1, R3), true));
            }
            if let Some(major) = rule.major {
                block.push((jne_imm(R4, imm(major)), true));
            }
            if let Some(minor) = rule.minor {
                block.push((jne_imm(R5, imm(minor)), true));
            }
            block.push((alu32_imm(BPF_MOV, R0, i32::from(rule.allow)), false));
            block.push((exit(), false));
            let len = block.len();
            for (i, (mut insn, jumps)) in block.into_iter().enumerate() {
                if jumps {
                    insn.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
                }
                p.push(insn);
            }
        }
        p.push(alu32_imm(BPF_MOV, R0, i32::from(self.default_allow)));
        p.push(exit());
        p
    }
}

/// A major or minor as the 32-bit immediate runc writes (`int32(n)`); Linux's numbers have 12
/// and 20 bits, so the kernel's sign extension of the immediate never matters.
fn imm(n: u32) -> i32 {
    i32::from_ne_bytes(n.to_ne_bytes())
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
/// `BPF_ALU` (32-bit) operations.
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;

/// `dst_reg:4, src_reg:4` as the C bitfield lays them out.
fn regs(dst: u8, src: u8) -> u8 {
    if cfg!(target_endian = "little") {
        dst | src << 4
    } else {
        dst << 4 | src
    }
}

fn insn(code: u8, dst: u8, src: u8, imm: i32) -> BpfInsn {
    BpfInsn { code, regs: regs(dst, src), off: 0, imm }
}

/// `dst = *(u32 *)(src + off)`: `BPF_LDX | BPF_MEM | BPF_W`.
fn ldx_w(dst: u8, src: u8, off: i16) -> BpfInsn {
    BpfInsn { off, ..insn(0x61, dst, src, 0) }
}

/// `BPF_ALU | op | BPF_K`.
fn alu32_imm(op: u8, dst: u8, imm: i32) -> BpfInsn {
    insn(0x04 | op, dst, 0, imm)
}

/// `BPF_ALU | op | BPF_X`.
fn alu32_reg(op: u8, dst: u8, src: u8) -> BpfInsn {
    insn(0x04 | op | 0x08, dst, src, 0)
}

/// `if dst != imm goto +off` (64-bit compare): `BPF_JMP | BPF_JNE | BPF_K`.
fn jne_imm(dst: u8, imm: i32) -> BpfInsn {
    insn(0x55, dst, 0, imm)
}

/// `if dst != src goto +off`: `BPF_JMP | BPF_JNE | BPF_X`.
fn jne_reg(dst: u8, src: u8) -> BpfInsn {
    insn(0x5d, dst, src, 0)
}

/// `BPF_JMP | BPF_EXIT`.
fn exit() -> BpfInsn {
    insn(0x95, 0, 0, 0)
}

/// The license the program declares (it calls no helper, so only the kernel's bookkeeping
/// reads it); fcsup's own.
const LICENSE: &CStr = c"Apache-2.0";

/// Loads `insns`; a refusal carries the verifier's log (the load is repeated with a log
/// buffer only then: logging costs on every successful load).
pub fn load(insns: &[BpfInsn]) -> Result<OwnedFd> {
    if let Ok(fd) = sys::bpf_load_cgroup_device(insns, LICENSE, &mut []) {
        return Ok(fd);
    }
    let mut log = vec![0u8; 256 * 1024];
    sys::bpf_load_cgroup_device(insns, LICENSE, &mut log).map_err(|errno| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        DeviceError::Load { errno, log: String::from_utf8_lossy(&log[..end]).trim_end().to_string() }
    })
}

/// Attaches the program `prog` to the cgroup directory `cgroup` (`BPF_F_ALLOW_MULTI`: a
/// parent's program still runs and can only narrow access further).
pub fn attach(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>) -> Result<()> {
    sys::bpf_attach_cgroup_device(prog, cgroup).map_err(DeviceError::Attach)
}

/// The ids of the device programs attached to the cgroup directory `cgroup` itself.
pub fn attached_ids(cgroup: BorrowedFd<'_>) -> Result<Vec<u32>> {
    sys::bpf_query_cgroup_device(cgroup).map_err(DeviceError::Query)
}

/// Whether the kernel still holds the program `id` (attached somewhere, or open).
pub fn program_exists(id: u32) -> bool {
    sys::bpf_prog_fd_by_id(id).is_ok()
}

/// One loaded program per distinct effective rule set (a load costs ~120 µs, an attach
/// ~16 µs), kept for the supervisor's life.
#[derive(Debug, Default)]
pub struct ProgramCache {
    programs: Mutex<HashMap<Effective, Arc<OwnedFd>>>,
}

impl ProgramCache {
    /// The loaded program of `rules`, loading it on first use.
    pub fn get(&self, rules: &Effective) -> Result<Arc<OwnedFd>> {
        let mut programs = self.programs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = programs.get(rules) {
            return Ok(p.clone());
        }
        let fd = Arc::new(load(&rules.program())?);
        programs.insert(rules.clone(), fd.clone());
        Ok(fd)
    }

    /// Loads (or finds) the program of `rules` and attaches it to `cgroup`.
    pub fn attach(&self, rules: &Effective, cgroup: BorrowedFd<'_>) -> Result<()> {
        attach(self.get(rules)?.as_fd(), cgroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program in the notation of runc's golden tests (cilium/ebpf's `Instructions.String`
    /// with the `block-N:` labels and jump targets), so runc's expectations can be pasted as
    /// they are.
    fn runc_listing(p: &[BpfInsn]) -> String {
        // Blocks start after the 6 loads and after every exit.
        let mut starts = vec![6usize];
        starts.extend(p.iter().enumerate().filter(|(_, i)| i.code == 0x95).map(|(n, _)| n + 1).filter(|&n| n < p.len()));
        let mut out = Vec::new();
        for (n, i) in p.iter().enumerate() {
            if let Some(b) = starts.iter().position(|&s| s == n) {
                out.push(format!("block-{b}:"));
            }
            let (dst, src) = (i.regs & 0xf, i.regs >> 4);
            let target = |off: i16| {
                let t = usize::try_from(i64::try_from(n).unwrap() + 1 + i64::from(off)).unwrap();
                format!("<block-{}>", starts.iter().position(|&s| s == t).expect("jumps land on a block start"))
            };
            out.push(match i.code {
                0x61 => format!("{n}: LdXMemW dst: r{dst} src: r{src} off: {} imm: 0", i.off),
                0x54 => format!("{n}: AndImm32 dst: r{dst} imm: {}", i.imm),
                0x74 => format!("{n}: RShImm32 dst: r{dst} imm: {}", i.imm),
                0xbc => format!("{n}: MovReg32 dst: r{dst} src: r{src}"),
                0xb4 => format!("{n}: MovImm32 dst: r{dst} imm: {}", i.imm),
                0x55 => format!("{n}: JNEImm dst: r{dst} off: -1 imm: {} {}", i.imm, target(i.off)),
                0x5d => format!("{n}: JNEReg dst: r{dst} off: -1 src: r{src} {}", target(i.off)),
                0x95 => format!("{n}: Exit"),
                c => panic!("unexpected opcode {c:#x}"),
            });
        }
        out.join("\n")
    }

    /// runc's `hash`: trimmed lines without comments or blanks.
    fn strip(s: &str) -> String {
        s.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")).collect::<Vec<_>>().join("\n")
    }

    fn bytes(p: &[BpfInsn]) -> Vec<u8> {
        p.iter().flat_map(|i| [[i.code, i.regs], i.off.to_le_bytes()].concat().into_iter().chain(i.imm.to_le_bytes())).collect()
    }

    fn rules(lines: &[(&str, bool)]) -> DeviceRules {
        let mut r = DeviceRules::deny_all();
        for (l, allow) in lines {
            let rule: DeviceRule = l.parse().unwrap();
            r.push(if *allow { rule } else { rule.deny() });
        }
        r
    }

    /// The six loads of every program (runc's "load parameters into registers").
    const PROLOGUE: &str = "
        0: LdXMemW dst: r2 src: r1 off: 0 imm: 0
        1: AndImm32 dst: r2 imm: 65535
        2: LdXMemW dst: r3 src: r1 off: 0 imm: 0
        3: RShImm32 dst: r3 imm: 16
        4: LdXMemW dst: r4 src: r1 off: 4 imm: 0
        5: LdXMemW dst: r5 src: r1 off: 8 imm: 0";

    /// runc's `TestDeviceFilter_BuiltInAllowList` (opencontainers/cgroups
    /// devices/devicefilter_test.go at 30a2293), pasted as it is.
    #[test]
    fn runc_default_is_runcs_program() {
        let expected = "
// load parameters into registers
        0: LdXMemW dst: r2 src: r1 off: 0 imm: 0
        1: AndImm32 dst: r2 imm: 65535
        2: LdXMemW dst: r3 src: r1 off: 0 imm: 0
        3: RShImm32 dst: r3 imm: 16
        4: LdXMemW dst: r4 src: r1 off: 4 imm: 0
        5: LdXMemW dst: r5 src: r1 off: 8 imm: 0
block-0:
// (b, wildcard, wildcard, m, true)
        6: JNEImm dst: r2 off: -1 imm: 1 <block-1>
        7: MovReg32 dst: r1 src: r3
        8: AndImm32 dst: r1 imm: 1
        9: JNEReg dst: r1 off: -1 src: r3 <block-1>
        10: MovImm32 dst: r0 imm: 1
        11: Exit
block-1:
// (c, wildcard, wildcard, m, true)
        12: JNEImm dst: r2 off: -1 imm: 2 <block-2>
        13: MovReg32 dst: r1 src: r3
        14: AndImm32 dst: r1 imm: 1
        15: JNEReg dst: r1 off: -1 src: r3 <block-2>
        16: MovImm32 dst: r0 imm: 1
        17: Exit
block-2:
        18: JNEImm dst: r2 off: -1 imm: 2 <block-3>
        19: JNEImm dst: r4 off: -1 imm: 1 <block-3>
        20: JNEImm dst: r5 off: -1 imm: 3 <block-3>
        21: MovImm32 dst: r0 imm: 1
        22: Exit
block-3:
        23: JNEImm dst: r2 off: -1 imm: 2 <block-4>
        24: JNEImm dst: r4 off: -1 imm: 1 <block-4>
        25: JNEImm dst: r5 off: -1 imm: 5 <block-4>
        26: MovImm32 dst: r0 imm: 1
        27: Exit
block-4:
        28: JNEImm dst: r2 off: -1 imm: 2 <block-5>
        29: JNEImm dst: r4 off: -1 imm: 1 <block-5>
        30: JNEImm dst: r5 off: -1 imm: 7 <block-5>
        31: MovImm32 dst: r0 imm: 1
        32: Exit
block-5:
        33: JNEImm dst: r2 off: -1 imm: 2 <block-6>
        34: JNEImm dst: r4 off: -1 imm: 1 <block-6>
        35: JNEImm dst: r5 off: -1 imm: 8 <block-6>
        36: MovImm32 dst: r0 imm: 1
        37: Exit
block-6:
        38: JNEImm dst: r2 off: -1 imm: 2 <block-7>
        39: JNEImm dst: r4 off: -1 imm: 1 <block-7>
        40: JNEImm dst: r5 off: -1 imm: 9 <block-7>
        41: MovImm32 dst: r0 imm: 1
        42: Exit
block-7:
        43: JNEImm dst: r2 off: -1 imm: 2 <block-8>
        44: JNEImm dst: r4 off: -1 imm: 5 <block-8>
        45: JNEImm dst: r5 off: -1 imm: 0 <block-8>
        46: MovImm32 dst: r0 imm: 1
        47: Exit
block-8:
        48: JNEImm dst: r2 off: -1 imm: 2 <block-9>
        49: JNEImm dst: r4 off: -1 imm: 5 <block-9>
        50: JNEImm dst: r5 off: -1 imm: 2 <block-9>
        51: MovImm32 dst: r0 imm: 1
        52: Exit
block-9:
// tuntap (c, 10, 200, rwm, true)
        53: JNEImm dst: r2 off: -1 imm: 2 <block-10>
        54: JNEImm dst: r4 off: -1 imm: 10 <block-10>
        55: JNEImm dst: r5 off: -1 imm: 200 <block-10>
        56: MovImm32 dst: r0 imm: 1
        57: Exit
block-10:
// /dev/pts (c, 136, wildcard, rwm, true)
	58: JNEImm dst: r2 off: -1 imm: 2 <block-11>
        59: JNEImm dst: r4 off: -1 imm: 136 <block-11>
        60: MovImm32 dst: r0 imm: 1
        61: Exit
block-11:
        62: MovImm32 dst: r0 imm: 0
        63: Exit
";
        let p = DeviceRules::runc_default().effective().unwrap().program();
        assert_eq!(strip(&runc_listing(&p)), strip(expected));
        // The bytes of the first block, by hand from the opcode tables (little-endian):
        // 55 02 0500 01000000  if r2 != 1 goto +5   (JMP|JNE|K)
        // bc 31 0000 00000000  w1 = w3              (ALU|MOV|X)
        // 54 01 0000 01000000  w1 &= 1              (ALU|AND|K)
        // 5d 31 0200 00000000  if r1 != r3 goto +2  (JMP|JNE|X)
        // b4 00 0000 01000000  w0 = 1               (ALU|MOV|K)
        // 95 00 0000 00000000  exit
        let block0: [u8; 48] = [
            0x55, 0x02, 5, 0, 1, 0, 0, 0, //
            0xbc, 0x31, 0, 0, 0, 0, 0, 0, //
            0x54, 0x01, 0, 0, 1, 0, 0, 0, //
            0x5d, 0x31, 2, 0, 0, 0, 0, 0, //
            0xb4, 0x00, 0, 0, 1, 0, 0, 0, //
            0x95, 0x00, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&bytes(&p)[6 * 8..12 * 8], &block0);
    }

    /// runc's `TestDeviceFilter_Nil`: nothing allowed.
    #[test]
    fn deny_all_program_bytes() {
        let p = DeviceRules::deny_all().effective().unwrap().program();
        assert_eq!(strip(&runc_listing(&p)), strip(&format!("{PROLOGUE}\nblock-0:\n6: MovImm32 dst: r0 imm: 0\n7: Exit")));
        #[rustfmt::skip]
        let expected: [u8; 64] = [
            0x61, 0x12, 0, 0, 0, 0, 0, 0,        // r2 = *(u32 *)(r1 + 0)
            0x54, 0x02, 0, 0, 0xff, 0xff, 0, 0,  // w2 &= 0xffff
            0x61, 0x13, 0, 0, 0, 0, 0, 0,        // r3 = *(u32 *)(r1 + 0)
            0x74, 0x03, 0, 0, 16, 0, 0, 0,       // w3 >>= 16
            0x61, 0x14, 4, 0, 0, 0, 0, 0,        // r4 = *(u32 *)(r1 + 4)
            0x61, 0x15, 8, 0, 0, 0, 0, 0,        // r5 = *(u32 *)(r1 + 8)
            0xb4, 0x00, 0, 0, 0, 0, 0, 0,        // w0 = 0
            0x95, 0x00, 0, 0, 0, 0, 0, 0,        // exit
        ];
        assert_eq!(bytes(&p), expected);
    }

    /// The default plus one granted char device (a GPU's `c 195:0 rw`): one more block with
    /// the access check, sorted between 136:* and the end.
    #[test]
    fn default_plus_one_char_device() {
        let r = DeviceRules::runc_default().with_granted(&[DeviceRule::allow_char(195, 0, Access::RW)]);
        let p = r.effective().unwrap().program();
        let listing = runc_listing(&p);
        let tail = "
block-11:
62: JNEImm dst: r2 off: -1 imm: 2 <block-12>
63: MovReg32 dst: r1 src: r3
64: AndImm32 dst: r1 imm: 6
65: JNEReg dst: r1 off: -1 src: r3 <block-12>
66: JNEImm dst: r4 off: -1 imm: 195 <block-12>
67: JNEImm dst: r5 off: -1 imm: 0 <block-12>
68: MovImm32 dst: r0 imm: 1
69: Exit
block-12:
70: MovImm32 dst: r0 imm: 0
71: Exit";
        assert!(strip(&listing).ends_with(&strip(tail)), "{listing}");
        #[rustfmt::skip]
        let block11: [u8; 64] = [
            0x55, 0x02, 7, 0, 2, 0, 0, 0,      // if r2 != 2 (char) goto +7
            0xbc, 0x31, 0, 0, 0, 0, 0, 0,      // w1 = w3
            0x54, 0x01, 0, 0, 6, 0, 0, 0,      // w1 &= rw
            0x5d, 0x31, 4, 0, 0, 0, 0, 0,      // if r1 != r3 goto +4
            0x55, 0x04, 3, 0, 195, 0, 0, 0,    // if r4 != 195 goto +3
            0x55, 0x05, 2, 0, 0, 0, 0, 0,      // if r5 != 0 goto +2
            0xb4, 0x00, 0, 0, 1, 0, 0, 0,      // w0 = 1
            0x95, 0x00, 0, 0, 0, 0, 0, 0,      // exit
        ];
        assert_eq!(&bytes(&p)[62 * 8..70 * 8], &block11);
        assert_eq!(p.len(), 72);
    }

    /// A wildcard major (`c *:5 r`) sorts first (runc's -1) and has no major check.
    #[test]
    fn wildcard_major() {
        let p = rules(&[("c *:5 r", true)]).effective().unwrap().program();
        let expected = format!(
            "{PROLOGUE}
block-0:
6: JNEImm dst: r2 off: -1 imm: 2 <block-1>
7: MovReg32 dst: r1 src: r3
8: AndImm32 dst: r1 imm: 2
9: JNEReg dst: r1 off: -1 src: r3 <block-1>
10: JNEImm dst: r5 off: -1 imm: 5 <block-1>
11: MovImm32 dst: r0 imm: 1
12: Exit
block-1:
13: MovImm32 dst: r0 imm: 0
14: Exit"
        );
        assert_eq!(strip(&runc_listing(&p)), strip(&expected));
        #[rustfmt::skip]
        let block0: [u8; 56] = [
            0x55, 0x02, 6, 0, 2, 0, 0, 0,  // if r2 != 2 goto +6
            0xbc, 0x31, 0, 0, 0, 0, 0, 0,  // w1 = w3
            0x54, 0x01, 0, 0, 2, 0, 0, 0,  // w1 &= r
            0x5d, 0x31, 3, 0, 0, 0, 0, 0,  // if r1 != r3 goto +3
            0x55, 0x05, 2, 0, 5, 0, 0, 0,  // if r5 != 5 goto +2
            0xb4, 0x00, 0, 0, 1, 0, 0, 0,  // w0 = 1
            0x95, 0x00, 0, 0, 0, 0, 0, 0,  // exit
        ];
        assert_eq!(&bytes(&p)[6 * 8..13 * 8], &block0);
    }

    /// A block device with `m` only (`b 8:0 m`).
    #[test]
    fn block_device_mknod_only() {
        let p = rules(&[("b 8:0 m", true)]).effective().unwrap().program();
        #[rustfmt::skip]
        let block0: [u8; 64] = [
            0x55, 0x02, 7, 0, 1, 0, 0, 0,  // if r2 != 1 (block) goto +7
            0xbc, 0x31, 0, 0, 0, 0, 0, 0,  // w1 = w3
            0x54, 0x01, 0, 0, 1, 0, 0, 0,  // w1 &= m
            0x5d, 0x31, 4, 0, 0, 0, 0, 0,  // if r1 != r3 goto +4
            0x55, 0x04, 3, 0, 8, 0, 0, 0,  // if r4 != 8 goto +3
            0x55, 0x05, 2, 0, 0, 0, 0, 0,  // if r5 != 0 goto +2
            0xb4, 0x00, 0, 0, 1, 0, 0, 0,  // w0 = 1
            0x95, 0x00, 0, 0, 0, 0, 0, 0,  // exit
        ];
        let b = bytes(&p);
        assert_eq!(&b[6 * 8..14 * 8], &block0);
        assert_eq!(&b[14 * 8..], &[0xb4, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    /// runc's `TestDeviceFilter_PrivilegedExceptSingleDevice` and `TestDeviceFilter_Weird`:
    /// allow-all with deny exceptions, and an `a` that resets what came before it.
    #[test]
    fn allow_all_with_exceptions_is_runcs() {
        let expected = format!(
            "{PROLOGUE}
block-0:
6: JNEImm dst: r2 off: -1 imm: 1 <block-1>
7: JNEImm dst: r4 off: -1 imm: 8 <block-1>
8: JNEImm dst: r5 off: -1 imm: {{}} <block-1>
9: MovImm32 dst: r0 imm: 0
10: Exit
block-1:
11: MovImm32 dst: r0 imm: 1
12: Exit"
        );
        let p = rules(&[("a", true), ("b 8:0 rwm", false)]).effective().unwrap().program();
        assert_eq!(strip(&runc_listing(&p)), strip(&expected.replace("{}", "0")));
        let p = rules(&[("b 8:1 rwm", false), ("a", true), ("b 8:2 rwm", false)]).effective().unwrap().program();
        assert_eq!(strip(&runc_listing(&p)), strip(&expected.replace("{}", "2")));
    }

    #[test]
    fn later_rules_win_and_holes_are_refused() {
        // A later deny takes away what an earlier allow gave.
        let e = rules(&[("c 1:3 rwm", true), ("c 1:3 w", false)]).effective().unwrap();
        assert_eq!(e.entries().map(|r| r.to_string()).collect::<Vec<_>>(), ["c 1:3 rm"]);
        // Allows merge.
        let e = rules(&[("c 1:3 r", true), ("c 1:3 w", true)]).effective().unwrap();
        assert_eq!(e.entries().next().unwrap().access, Access::RW);
        // Denying a pts out of the 136:* wildcard is refused, as cgroup v1 refuses it.
        let err = DeviceRules::runc_default().with_granted(&[DeviceRule::allow_char(136, 4, Access::ALL).deny()]).effective().unwrap_err();
        assert!(err.to_string().contains("c 136:* rwm"), "{err}");
    }

    #[test]
    fn parse_and_print() {
        for s in ["c 1:3 rwm", "b *:* m", "c 136:* rw", "a"] {
            assert_eq!(s.parse::<DeviceRule>().unwrap().to_string(), s);
        }
        assert_eq!("c 1:3".parse::<DeviceRule>().unwrap().access, Access::ALL);
        for bad in ["x 1:3 r", "c 1 r", "c 1:3 q", "c a:3 r", "c 1:3 r extra"] {
            assert!(bad.parse::<DeviceRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn v1_writes_reset_then_allow() {
        let w = DeviceRules::runc_default().effective().unwrap().v1_writes();
        assert_eq!(w[0], ("devices.deny", "a".to_string()));
        assert_eq!(w[1], ("devices.allow", "b *:* m".to_string()));
        assert_eq!(w.last().unwrap(), &("devices.allow", "c 136:* rwm".to_string()));
        assert_eq!(w.len(), 12);
        let w = rules(&[("a", true), ("b 8:0 rwm", false)]).effective().unwrap().v1_writes();
        assert_eq!(w, [("devices.allow", "a".to_string()), ("devices.deny", "b 8:0 rwm".to_string())]);
    }

    /// Different orders of the same rules share one cached program.
    #[test]
    fn equal_effects_are_equal_keys() {
        let a = rules(&[("c 1:3 rwm", true), ("c 1:5 rwm", true)]).effective().unwrap();
        let b = rules(&[("c 1:5 rwm", true), ("c 1:3 rwm", true)]).effective().unwrap();
        assert_eq!(a, b);
    }
}
