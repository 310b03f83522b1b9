//! The Zig sample: writes its greeting and argument count through WASI directly (the raw
//! `fd_write`/`args_sizes_get` bindings, stable across Zig releases) and exits with 7.
const std = @import("std");
const wasi = std.os.wasi;

fn write(fd: wasi.fd_t, msg: []const u8) void {
    const iov = [_]wasi.ciovec_t{.{ .base = msg.ptr, .len = msg.len }};
    var n: usize = undefined;
    _ = wasi.fd_write(fd, &iov, iov.len, &n);
}

pub fn main() u8 {
    write(1, "Hello from Zig in a wasmvm VM!\n");
    var argc: usize = 0;
    var buf_size: usize = 0;
    _ = wasi.args_sizes_get(&argc, &buf_size);
    var line: [64]u8 = undefined;
    const text = std.fmt.bufPrint(&line, "argc: {d}\n", .{argc}) catch "argc: ?\n";
    write(1, text);
    write(2, "Zig stderr line\n");
    return 7;
}
