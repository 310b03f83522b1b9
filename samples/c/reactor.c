/* The C reactor (wasi-libc via `zig cc --target=wasm32-wasi -mexec-model=reactor`): no
 * `main`, no `_start`. wasi-libc's crt1-reactor.o exports `_initialize`, which runs the
 * constructors below and traps (`__builtin_trap`, wasm `unreachable`) if it is called a
 * second time: the reactor ABI allows exactly one call per instance. `answer` is the export
 * a host invokes afterwards; its status, 41 + the constructor's runs, is 42 only when the
 * constructor ran exactly once.
 *
 * A reactor never reaches `exit`, so nothing flushes stdio for it: every line is flushed by
 * hand (stdout is fully buffered when it is not a terminal). */
#include <stdio.h>

static int constructed;

__attribute__((constructor)) static void construct(void) {
    constructed++;
    printf("C reactor constructed\n");
    fflush(stdout);
}

__attribute__((export_name("answer"))) int answer(void) {
    printf("C reactor answers\n");
    fflush(stdout);
    return 41 + constructed;
}
