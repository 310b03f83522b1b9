//! Ring-0 boot: the PVH entry point, long mode, and the one-way drop to CPL 3.
//!
//! On the nested KVM we target, code at CPL 0 is emulated instruction by instruction (about
//! 5000× slower than native), while CPL 3 runs natively and any CPL 3 → 0 transition
//! (syscall, interrupt, exception) cannot be delivered. So everything privileged happens here,
//! in a few dozen instructions and with no loops: the page tables and GDT are pre-built data
//! in the image, and the code only loads them, turns on long mode and SSE, registers the
//! kvmclock page when KVM offers one, and `iretq`s to [`crate::kernel_main`] at CPL 3 with
//! IOPL 3 (so `in`/`out` keep working). The IDT is loaded empty on purpose: any CPU
//! exception from then on escalates to a triple fault, which the host reports as a guest
//! crash. A VMM that knows wasmvm skips all of this and enters at `direct_entry64` in the
//! state `wasmvm_abi::direct` describes.
//!
//! The same 32-bit entry serves Multiboot2 (GRUB, in exported disk images): the loader says
//! so with `%eax` = `BOOTLOADER_MAGIC` and `%ebx` = its boot information. That path runs on
//! a standard PC with firmware, so before the drop it also calls
//! [`crate::arch::standalone::setup`], which finds the virtio PCI devices (configuration
//! space is behind ports above 0xff) and maps their registers.

use core::arch::global_asm;

/// Size of the kernel stack (in `.bss`, touched only as deep as it is used). Compiled wasm
/// (wasmtime) runs on this stack, down to `MAX_WASM_STACK` below where it was entered, after
/// which it traps. Below that limit runs what is not checked: the last wasm frame's
/// overshoot, host functions called from wasm (WASI, the network stack) and the trap and
/// exception paths. Hence the slack.
#[cfg(feature = "engine-wasmtime")]
pub const STACK_SIZE: usize = 4 << 20;
/// Size of the kernel stack (in `.bss`, touched only as deep as it is used). wasmi keeps
/// wasm values and frames on the heap, so the stack holds only the kernel's own calls
/// (WASI, the network stack, translation); what it does not take is RAM the app gets (the
/// linear memory lies above the kernel's image).
#[cfg(not(feature = "engine-wasmtime"))]
pub const STACK_SIZE: usize = 1 << 20;

/// The stack kept for what runs below compiled wasm's stack limit unchecked.
#[cfg(feature = "engine-wasmtime")]
const WASM_STACK_SLACK: usize = 512 << 10;

#[cfg(feature = "engine-wasmtime")]
const _: () = assert!(
    STACK_SIZE >= wasmvm_engine::compiled::MAX_WASM_STACK + WASM_STACK_SLACK,
    "the kernel stack must hold compiled wasm's stack plus slack"
);

/// What [`mark_stack_end`] writes at the stack's lowest word.
const STACK_CANARY: u64 = u64::from_le_bytes(*b"WASMVMSt");

unsafe extern "C" {
    /// The lowest byte of the kernel stack (the assembly below).
    static mut boot_stack: u64;
}

/// Marks the stack's lowest word. The stack lies in `.bss` with no guard page below it (no
/// exception could be taken at CPL 3 anyway), so an overflow would silently overwrite the
/// kernel's statics; [`stack_overflowed`] tells it at the end, so that the run fails with
/// that reason rather than whatever the corruption did.
pub fn mark_stack_end() {
    // SAFETY: `boot_stack` is the kernel's own, 4 KiB-aligned stack area; its lowest word is
    // only ever reached by an overflow, and nothing else aliases it.
    unsafe { core::ptr::addr_of_mut!(boot_stack).write_volatile(STACK_CANARY) }
}

/// Whether the stack grew past its end since [`mark_stack_end`].
pub fn stack_overflowed() -> bool {
    // SAFETY: as in `mark_stack_end`; a read of the kernel's own memory.
    unsafe { core::ptr::addr_of!(boot_stack).read_volatile() != STACK_CANARY }
}

/// GDT selectors. User data precedes user code, as `sysret` would expect.
pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
/// RFLAGS for CPL 3: IOPL 3 and the always-one bit; interrupts stay off.
const USER_RFLAGS: u64 = (3 << 12) | (1 << 1);
/// MSR_KVM_SYSTEM_TIME_NEW: where KVM publishes the pvclock page.
const MSR_KVM_SYSTEM_TIME: u32 = 0x4b56_4d01;
/// Bit of CPUID 0x4000_0001.EAX: KVM_FEATURE_CLOCKSOURCE2.
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;

/// The kvmclock (pvclock) page KVM keeps up to date, zero if the VMM has none.
#[repr(C, align(64))]
pub struct PvclockPage(pub [u8; 64]);

#[unsafe(no_mangle)]
pub static mut KVMCLOCK_PAGE: PvclockPage = PvclockPage([0; 64]);

global_asm!(
    // PVH entry note: loaders start us in 32-bit protected mode, paging off, at this address,
    // with the physical address of `hvm_start_info` in %ebx.
    r#"
    .section .note.Xen, "a"
    .p2align 2
    .long 4, 4, {xen_elfnote_phys32_entry}
    .asciz "Xen"
    .long pvh_start32
    .p2align 2

    /* Direct-entry note (wasmvm_abi::direct): a VMM that knows wasmvm starts us at
       direct_entry64, already in long mode at CPL 3, and skips everything privileged. */
    .section .note.wasmvm, "a"
    .p2align 2
    .long 7, 8, {direct_entry_note}
    .asciz "wasmvm"
    .p2align 2
    .quad direct_entry64
    .p2align 2

    /* Multiboot2 header (wasmvm_abi::multiboot2): 8-byte aligned within the file's first
       32 KiB (linker.ld puts it first); no tags but the end tag, so GRUB loads the ELF
       segments, the app bundle's included, and enters at the ELF entry, pvh_start32. */
    .section .multiboot2, "a"
    .p2align 3
multiboot2_header:
    .long {mb2_magic}, {mb2_arch}, 24, {mb2_checksum}
    .short 0, 0
    .long 8

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %edi
    /* %esi: 0 for PVH, 2 for Multiboot2 (kernel_main's second argument). */
    xorl %esi, %esi
    cmpl ${mb2_loader_magic}, %eax
    jne 2f
    movl $2, %esi
2:
    movl $boot_stack_top, %esp
    /* Known flags (a loader may leave NT set, which would make iretq fault). */
    pushl $2
    popfl
    lgdt boot_gdt_ptr
    lidt boot_null_idt_ptr
    /* PAE, OSFXSR, OSXMMEXCPT */
    movl $0x620, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    /* EFER.LME */
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    /* PG | NE | MP | PE, EM clear: paging, and SSE usable */
    movl $0x80000023, %eax
    movl %eax, %cr0
    ljmp ${kernel_cs}, $boot_long_mode

    .code64
boot_long_mode:
    movl ${kernel_ds}, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    /* %rdi: start_info or Multiboot2 info, %rsi: the path, zero-extended (upper halves
       are undefined after the mode switch). */
    movl %edi, %edi
    movl %esi, %esi
    movl $boot_stack_top, %esp

    /* kvmclock, if this is KVM with CLOCKSOURCE2: one MSR write, here because it needs CPL 0. */
    movl $0x40000000, %eax
    cpuid
    cmpl $0x4b4d564b, %ebx
    jne 1f
    cmpl $0x564b4d56, %ecx
    jne 1f
    cmpl $0x4d, %edx
    jne 1f
    movl $0x40000001, %eax
    cpuid
    testl ${kvm_clocksource2}, %eax
    jz 1f
    movl ${msr_kvm_system_time}, %ecx
    movl $KVMCLOCK_PAGE, %eax
    orl $1, %eax
    xorl %edx, %edx
    wrmsr
1:
    /* Multiboot2: a PC with firmware; find its devices while port I/O is still allowed.
       %rbx and %r12 are callee-saved, so they carry the arguments across the call. */
    cmpl $2, %esi
    jne 3f
    movq %rdi, %rbx
    movq %rsi, %r12
    call {standalone_setup}
    movq %rbx, %rdi
    movq %r12, %rsi
3:
    /* kernel_main(info, path) */
    /* The one-way trip to CPL 3. The stack is arranged as after a call (rsp = 8 mod 16). */
    pushq ${user_ds}
    pushq $boot_stack_top - 8
    pushq ${user_rflags}
    pushq ${user_cs}
    pushq $boot_user_entry
    iretq

    /* First code at CPL 3. x87/SSE state is reset here, not above: KVM's instruction
       emulator, which runs our CPL-0 code on nested PVM, cannot emulate ldmxcsr. */
boot_user_entry:
    fninit
    ldmxcsr boot_mxcsr
    jmp kernel_main

    /* The direct entry: CPL 3 already, %rdi = BootInfo. kernel_main(boot_info, 1). */
direct_entry64:
    movq $boot_stack_top - 8, %rsp
    movl $1, %esi
    jmp boot_user_entry

    .section .rodata.boot, "a"
    .p2align 4
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff  /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff  /* 0x10 kernel data */
    .quad 0x00cff2000000ffff  /* 0x18 user data, DPL 3 */
    .quad 0x00affa000000ffff  /* 0x20 user code, 64-bit, DPL 3 */
boot_gdt_end:
    .p2align 3
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
boot_null_idt_ptr:
    .word 0
    .quad 0
boot_mxcsr:
    .long 0x1f80

    /* Identity map of the low 4 GiB with 2 MiB pages, user accessible, built by the
       assembler so that boot runs no loop at CPL 0. */
    .section .data.boot_pagetables, "aw"
    .p2align 12
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x7
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x0000 + 0x7
    .quad boot_pd + 0x1000 + 0x7
    .quad boot_pd + 0x2000 + 0x7
    .quad boot_pd + 0x3000 + 0x7
    .fill 508, 8, 0
boot_pd:
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr

    .section .bss.boot_stack, "aw", @nobits
    .p2align 12
    .global boot_stack
boot_stack:
    .space {stack_size}
    .global boot_stack_top
boot_stack_top:
    "#,
    xen_elfnote_phys32_entry = const wasmvm_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY,
    direct_entry_note = const wasmvm_abi::bundle::kernel_note::TYPE_DIRECT_ENTRY,
    kernel_cs = const KERNEL_CS,
    kernel_ds = const KERNEL_DS,
    user_cs = const USER_CS,
    user_ds = const USER_DS,
    user_rflags = const USER_RFLAGS,
    msr_kvm_system_time = const MSR_KVM_SYSTEM_TIME,
    kvm_clocksource2 = const KVM_FEATURE_CLOCKSOURCE2,
    stack_size = const STACK_SIZE,
    mb2_magic = const wasmvm_abi::multiboot2::HEADER_MAGIC,
    mb2_arch = const wasmvm_abi::multiboot2::ARCH_I386,
    mb2_checksum = const wasmvm_abi::multiboot2::header_checksum(24),
    mb2_loader_magic = const wasmvm_abi::multiboot2::BOOTLOADER_MAGIC,
    standalone_setup = sym crate::arch::standalone::setup,
    options(att_syntax)
);
