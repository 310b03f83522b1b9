/* The C sample (wasi-libc via `zig cc --target=wasm32-wasi`): greets, echoes its
 * arguments and GREETING, copies the preopened file named by the first argument to stdout if
 * given, and exits with the length of its argument list. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    printf("Hello from C in a wasmvm VM!\n");
    for (int i = 1; i < argc; i++) {
        printf("arg %d: %s\n", i, argv[i]);
    }
    const char *greeting = getenv("GREETING");
    if (greeting) {
        printf("GREETING=%s\n", greeting);
    }
    if (argc > 1) {
        FILE *f = fopen(argv[1], "r");
        if (f) {
            char buf[256];
            size_t n;
            while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
                fwrite(buf, 1, n, stdout);
            }
            fclose(f);
        } else {
            perror(argv[1]);
        }
    }
    fprintf(stderr, "C stderr line\n");
    return argc - 1;
}
