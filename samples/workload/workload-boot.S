/* workload-boot.S: multiboot v1 header and entry of the workload guest.
 * Spec: Multiboot Specification 0.6.96, section 3.1 (header), 3.2 (state).
 *
 *   u32 magic 0x1BADB002 | u32 flags | u32 checksum (sum of the three = 0)
 *
 * flags bit 0: page-align modules, bit 1: pass memory information.  Bit 16
 * (a.out kludge) stays clear, so the loader takes addresses from the ELF
 * program headers.  On entry: 32-bit protected mode, paging off, flat
 * segments, eax = 0x2BADB002, ebx = physical address of the multiboot info,
 * esp undefined, interrupts off.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003

    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    movl $wl_stack_top, %esp
    xorl %ebp, %ebp
    pushl %ebx /* multiboot info */
    pushl %eax /* loader magic */
    call wl_main
1:  cli
    hlt
    jmp 1b
    .size _start, . - _start

    .bss
    .balign 16
wl_stack:
    .skip 65536
wl_stack_top:

    .section .note.GNU-stack, "", @progbits
