//! Lays an allow-list out as a program that finds a call's rules by binary search over the
//! listed system call numbers.
//!
//! seccompiler emits one chain that every call walks until its number matches: about two
//! instructions per listed call, ~80 for a call listed late or not at all. The kernel runs
//! the program at every system call of a confined thread, and once for every system call
//! number when the filter is installed, to learn which are always allowed
//! (`seccomp_cache_prepare`, under a spinlock with interrupts off). That made each install
//! cost ~0.2 ms on the development host, three per VM (the vCPU thread's on the way to the
//! guest's first instruction). A search takes about log2(n) comparisons instead.
//!
//! seccompiler still compiles each call's argument conditions: a call with conditions gets
//! the block seccompiler makes for a filter of that call alone, placed after the search
//! tree; an unconditional call is allowed right at its leaf.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch, sock_filter,
};

// Classic BPF opcodes (linux/bpf_common.h): load word at an absolute offset, jumps, return.
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// Instructions before the tree: check the architecture, load the call number.
const HEADER_LEN: usize = 4;

/// Why the search program could not be made.
#[derive(Debug)]
pub enum SearchError {
    /// seccompiler refused a call's rules.
    Rules(BackendError),
    /// seccompiler's program for one call did not start with the architecture check and the
    /// load of the call number this module relies on.
    UnexpectedShape { nr: i64 },
    /// A subtree is longer than a conditional jump reaches (255 instructions).
    TooManyCalls { calls: usize },
}

impl std::fmt::Display for SearchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchError::Rules(e) => write!(f, "{e}"),
            SearchError::UnexpectedShape { nr } => {
                write!(
                    f,
                    "seccompiler's program for call {nr} has an unexpected shape"
                )
            }
            SearchError::TooManyCalls { calls } => {
                write!(f, "{calls} calls are too many for one search tree")
            }
        }
    }
}

impl std::error::Error for SearchError {}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The program for `rules` (call number → conditions, none meaning always allowed) on
/// x86-64: `allow` for a listed call whose conditions hold, `deny` for anything else; a call
/// from another architecture (the 32-bit ABI) kills the process, as in seccompiler's.
pub fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    allow: SeccompAction,
    deny: SeccompAction,
) -> Result<BpfProgram, SearchError> {
    let arch = TargetArch::x86_64;
    let calls: Vec<i64> = rules.keys().copied().collect();
    let mut blocks: BTreeMap<i64, BpfProgram> = BTreeMap::new();
    for (nr, conditions) in rules.into_iter().filter(|(_, c)| !c.is_empty()) {
        let alone = SeccompFilter::new(
            BTreeMap::from([(nr, conditions)]),
            deny.clone(),
            allow.clone(),
            arch,
        )
        .and_then(BpfProgram::try_from)
        .map_err(SearchError::Rules)?;
        // seccompiler's program: check the architecture (3), load the number (1), then the
        // call's block, whose jumps stay inside it.
        if alone.len() <= HEADER_LEN
            || alone[HEADER_LEN - 1].code != LD_W_ABS
            || alone[HEADER_LEN - 1].k != NR_OFFSET
        {
            return Err(SearchError::UnexpectedShape { nr });
        }
        blocks.insert(nr, alone[HEADER_LEN..].to_vec());
    }

    let mut program = vec![
        stmt(LD_W_ABS, ARCH_OFFSET),
        jump(JMP_JEQ_K, arch_value(), 1, 0),
        stmt(RET_K, u32::from(SeccompAction::KillProcess)),
        stmt(LD_W_ABS, NR_OFFSET),
    ];
    let mut to_blocks = Vec::new();
    let tree = subtree(&calls, &blocks, &allow, &deny, &mut to_blocks)?;
    let tree_start = program.len();
    program.extend(tree);
    let mut block_start = BTreeMap::new();
    for (nr, block) in blocks {
        block_start.insert(nr, program.len());
        program.extend(block);
    }
    for (at, nr) in to_blocks {
        let at = tree_start + at;
        // A forward jump from the tree to a block after it.
        program[at].k = (block_start[&nr] - at - 1) as u32;
    }
    Ok(program)
}

/// `AUDIT_ARCH_X86_64`.
fn arch_value() -> u32 {
    // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    62 | 0x8000_0000 | 0x4000_0000
}

/// The search over `calls` (sorted), the call number loaded. An unconditional call's leaf
/// allows it if the number matches; a conditional call's leaf jumps to its block (recorded
/// in `to_blocks` as the jump's index in the returned code and the call).
fn subtree(
    calls: &[i64],
    blocks: &BTreeMap<i64, BpfProgram>,
    allow: &SeccompAction,
    deny: &SeccompAction,
    to_blocks: &mut Vec<(usize, i64)>,
) -> Result<Vec<sock_filter>, SearchError> {
    match calls {
        [] => Ok(vec![stmt(RET_K, u32::from(deny.clone()))]),
        [nr] if blocks.contains_key(nr) => {
            to_blocks.push((0, *nr));
            // The offset is filled in once the blocks are placed.
            Ok(vec![stmt(JMP_JA, 0)])
        }
        [nr] => Ok(vec![
            jump(JMP_JEQ_K, *nr as u32, 0, 1),
            stmt(RET_K, u32::from(allow.clone())),
            stmt(RET_K, u32::from(deny.clone())),
        ]),
        _ => {
            let (low, high) = calls.split_at(calls.len() / 2);
            let mut low_jumps = Vec::new();
            let left = subtree(low, blocks, allow, deny, &mut low_jumps)?;
            let mut high_jumps = Vec::new();
            let right = subtree(high, blocks, allow, deny, &mut high_jumps)?;
            let skip = u8::try_from(left.len())
                .map_err(|_| SearchError::TooManyCalls { calls: calls.len() })?;
            // Call numbers are small and non-negative; x32 calls (bit 30 set) compare
            // above all of them and end at the last leaf, which denies them.
            let mut code = vec![jump(JMP_JGE_K, high[0] as u32, skip, 0)];
            to_blocks.extend(low_jumps.into_iter().map(|(at, nr)| (at + 1, nr)));
            to_blocks.extend(
                high_jumps
                    .into_iter()
                    .map(|(at, nr)| (at + 1 + left.len(), nr)),
            );
            code.extend(left);
            code.extend(right);
            Ok(code)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `struct seccomp_data` for x86-64 as the kernel hands it to a filter.
    pub(crate) struct Call {
        pub nr: u32,
        pub arch: u32,
        pub args: [u64; 6],
    }

    impl Call {
        fn word(&self, offset: u32) -> u32 {
            let mut data = [0u8; 64];
            data[0..4].copy_from_slice(&self.nr.to_le_bytes());
            data[4..8].copy_from_slice(&self.arch.to_le_bytes());
            for (i, arg) in self.args.iter().enumerate() {
                data[16 + i * 8..24 + i * 8].copy_from_slice(&arg.to_le_bytes());
            }
            let at = offset as usize;
            u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
        }
    }

    /// Runs a classic BPF program as the kernel would (the instructions seccompiler and this
    /// module emit); returns the verdict and how many instructions ran. Panics on a jump
    /// out of the program or an instruction it does not know, as the kernel's checker
    /// would refuse them.
    pub(crate) fn run(program: &[sock_filter], call: &Call) -> (u32, usize) {
        let (mut pc, mut a, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let insn = &program[pc];
            steps += 1;
            let branch = |taken: bool| pc + 1 + usize::from(if taken { insn.jt } else { insn.jf });
            pc = match insn.code {
                LD_W_ABS => {
                    a = call.word(insn.k);
                    pc + 1
                }
                // BPF_ALU | BPF_AND | BPF_K
                0x54 => {
                    a &= insn.k;
                    pc + 1
                }
                JMP_JA => pc + 1 + insn.k as usize,
                JMP_JEQ_K => branch(a == insn.k),
                JMP_JGE_K => branch(a >= insn.k),
                // BPF_JMP | BPF_JGT | BPF_K
                0x25 => branch(a > insn.k),
                // BPF_JMP | BPF_JSET | BPF_K
                0x45 => branch(a & insn.k != 0),
                RET_K => return (insn.k, steps),
                other => panic!("instruction {other:#x} at {pc}"),
            };
            assert!(pc < program.len(), "jump out of the program");
        }
    }

    #[test]
    fn a_single_call_and_no_calls_are_searched_like_any_other() {
        let allow = u32::from(SeccompAction::Allow);
        let kill = u32::from(SeccompAction::KillProcess);
        let arch = arch_value();
        let call = |nr| Call {
            nr,
            arch,
            args: [0; 6],
        };
        let none = compile(
            BTreeMap::new(),
            SeccompAction::Allow,
            SeccompAction::KillProcess,
        )
        .unwrap();
        assert_eq!(run(&none, &call(0)).0, kill);
        let one = compile(
            BTreeMap::from([(39, vec![])]),
            SeccompAction::Allow,
            SeccompAction::KillProcess,
        )
        .unwrap();
        assert_eq!(run(&one, &call(39)).0, allow);
        assert_eq!(run(&one, &call(38)).0, kill);
        assert_eq!(run(&one, &call(40)).0, kill);
        // Another architecture is killed before the number is looked at.
        let i386 = Call {
            nr: 39,
            arch: 3 | 0x4000_0000,
            args: [0; 6],
        };
        assert_eq!(run(&one, &i386).0, kill);
    }
}
