//! The Zig reactor (`zig build-exe -target wasm32-wasi -mexec-model=reactor -rdynamic`), with
//! no libc: Zig's own start code exports `_initialize`, which calls `main` (not wasi-libc's
//! crt1-reactor, so nothing stops a second call). `main` is the reactor's initialiser: it
//! counts its runs and says so once per run. `answer` is the export a host invokes
//! afterwards; its status, 41 + the initialiser's runs, is 42 only when `main` ran exactly
//! once. Output goes through the raw `fd_write` binding, as in hello.zig.
const std = @import("std");
const wasi = std.os.wasi;

var initialised: i32 = 0;

fn write(fd: wasi.fd_t, msg: []const u8) void {
    const iov = [_]wasi.ciovec_t{.{ .base = msg.ptr, .len = msg.len }};
    var n: usize = undefined;
    _ = wasi.fd_write(fd, &iov, iov.len, &n);
}

pub fn main() void {
    initialised += 1;
    write(1, "Zig reactor initialised\n");
}

export fn answer() i32 {
    write(1, "Zig reactor answers\n");
    return 41 + initialised;
}
