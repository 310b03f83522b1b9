//! Clocks, randomness, sleeping and the environment, printed as properties rather than
//! values so that a VM run and a host run can be compared byte for byte.
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    // Realtime: a plausible wall-clock date (after 2024-01-01, before 2100).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch");
    println!(
        "realtime plausible: {}",
        (1_704_067_200..4_102_444_800).contains(&now.as_secs())
    );

    // Monotonic: never goes backwards, and a 20 ms sleep (poll_oneoff) takes at least 20 ms.
    let start = Instant::now();
    let mut last = start;
    let mut backwards = false;
    for _ in 0..1000 {
        let t = Instant::now();
        backwards |= t < last;
        last = t;
    }
    println!("monotonic never backwards: {}", !backwards);
    std::thread::sleep(Duration::from_millis(20));
    let slept = start.elapsed();
    println!(
        "slept at least 20ms: {}",
        slept >= Duration::from_millis(20)
    );
    println!("slept under 5s: {}", slept < Duration::from_secs(5));

    // Randomness: two 32-byte draws differ and are not all zero; HashMap seeds from it too.
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    getrandom(&mut a);
    getrandom(&mut b);
    println!("random draws differ: {}", a != b);
    println!("random not zero: {}", a.iter().any(|&x| x != 0));
    let mut m = HashMap::new();
    m.insert("k", 1);
    println!("hashmap works: {}", m["k"] == 1);

    let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    vars.sort();
    println!("env: {vars:?}");
    println!("args: {:?}", std::env::args().skip(1).collect::<Vec<_>>());
}

/// WASI `random_get`, through the raw import (std has no public API for it).
fn getrandom(buf: &mut [u8]) {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn random_get(buf: *mut u8, len: usize) -> u16;
    }
    // SAFETY: `buf` is valid for writes of its length; the host fills exactly that range.
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    assert_eq!(errno, 0, "random_get failed");
}
