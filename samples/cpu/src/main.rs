//! A CPU-bound workload for the engine benchmark: a sieve of Eratosthenes plus an FNV-1a
//! hash loop, sized by the first argument (default 2,000,000); or with `hash ROUNDS`, only a
//! hash loop over a 256 KiB table (a small working set: compute, not fresh memory). Prints a
//! checksum so the work cannot be optimised away and results can be compared between runs.
fn main() {
    let started = std::time::Instant::now();
    if std::env::args().nth(1).as_deref() == Some("hash") {
        let rounds: u64 = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(100);
        hash_table(rounds);
        report(started);
        return;
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let mut sieve = vec![true; n + 1];
    sieve[0] = false;
    if n >= 1 {
        sieve[1] = false;
    }
    let mut i = 2;
    while i * i <= n {
        if sieve[i] {
            let mut j = i * i;
            while j <= n {
                sieve[j] = false;
                j += i;
            }
        }
        i += 1;
    }
    let primes = sieve.iter().filter(|&&p| p).count();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for k in 0..(n as u64 * 4) {
        hash ^= k & 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    println!("primes up to {n}: {primes}, hash {hash:016x}");
    report(started);
}

/// FNV-1a over a 256 KiB table, `rounds` times, each round perturbing the table.
fn hash_table(rounds: u64) {
    let mut table: Vec<u32> = (0..65536u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for round in 0..rounds {
        for (i, v) in table.iter_mut().enumerate() {
            hash ^= u64::from(*v) ^ round;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
            *v = v.rotate_left((i & 31) as u32) ^ (hash as u32);
        }
    }
    println!("hash of {rounds} rounds: {hash:016x}");
}

/// Measured inside the app, so the benchmark compares engine time alone, without VM boot or
/// process start-up; only on request, so normal runs are deterministic.
fn report(started: std::time::Instant) {
    if std::env::var_os("CPU_TIMING").is_some() {
        eprintln!("compute_us {}", started.elapsed().as_micros());
    }
}
