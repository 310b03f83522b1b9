//! A CPU-bound workload for the interpreter benchmark: a sieve of Eratosthenes plus an
//! FNV-1a hash loop, sized by the first argument (default 2,000,000). Prints a checksum so the
//! work cannot be optimised away and results can be compared between runs.
fn main() {
    let started = std::time::Instant::now();
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
    // Measured inside the app, so the benchmark compares interpreter time alone, without
    // VM boot or process start-up; only on request, so normal runs are deterministic.
    if std::env::var_os("CPU_TIMING").is_some() {
        eprintln!("compute_us {}", started.elapsed().as_micros());
    }
}
