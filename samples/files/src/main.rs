//! Exercises std file I/O on a preopened directory (argv[1], default `/data`): lists it,
//! reads `input.txt`, writes, appends, renames and deletes files and directories, and prints
//! what it sees at each step so a run can be compared byte for byte.
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};

fn listing(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            let kind = if e.file_type().expect("file_type").is_dir() {
                "/"
            } else {
                ""
            };
            format!("{}{kind}", e.file_name().to_string_lossy())
        })
        .collect();
    names.sort();
    names
}

/// Modes for live host directories (`wasmvm run --dir`): what a host must see, and what the
/// app must not reach.
fn live(root: &str, mode: &str) {
    match mode {
        // An image converter in miniature: reads input.txt, leaves output.txt behind.
        "convert" => {
            let input = fs::read_to_string(format!("{root}/input.txt")).expect("read input.txt");
            fs::write(format!("{root}/output.txt"), input.to_uppercase()).expect("write");
            println!("converted {} bytes", input.len());
        }
        // Both directions during the run: waits for a line on stdin, then answers the file the
        // host wrote meanwhile.
        "relay" => {
            println!("ready");
            std::io::stdout().flush().expect("flush");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).expect("stdin");
            let text = fs::read_to_string(format!("{root}/from-host.txt")).expect("from-host");
            let reversed: String = text.chars().rev().collect();
            fs::write(format!("{root}/from-guest.txt"), reversed).expect("write from-guest");
            println!("relayed {} bytes", text.len());
        }
        // A read-only share: every change must fail.
        "try-write" => {
            let tries: [(&str, std::io::Result<()>); 3] = [
                ("create", fs::write(format!("{root}/new.txt"), "x")),
                ("mkdir", fs::create_dir(format!("{root}/newdir"))),
                ("remove", fs::remove_file(format!("{root}/input.txt"))),
            ];
            for (what, result) in tries {
                match result {
                    Ok(()) => println!("{what}: allowed"),
                    Err(e) => println!("{what}: refused ({:?})", e.kind()),
                }
            }
            let input = fs::read_to_string(format!("{root}/input.txt")).expect("read input.txt");
            println!("read: {input:?}");
        }
        // Ways out of the share: none may reach the secret next to it.
        "escape" => {
            for path in [
                "../secret.txt",
                "abs-link/secret.txt",
                "rel-link/secret.txt",
                "file-link",
            ] {
                match fs::read_to_string(format!("{root}/{path}")) {
                    Ok(text) => println!("{path}: READ {text:?}"),
                    Err(_) => println!("{path}: refused"),
                }
            }
            match fs::write(format!("{root}/rel-link/planted.txt"), "x") {
                Ok(()) => println!("plant: WROTE outside"),
                Err(_) => println!("plant: refused"),
            }
        }
        // A persistent counter: what a volume must keep between runs.
        "counter" => {
            let path = format!("{root}/count.txt");
            let count: u64 = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
                + 1;
            fs::create_dir_all(format!("{root}/log")).expect("mkdir log");
            fs::write(format!("{root}/log/run-{count}.txt"), "ran\n").expect("write log");
            fs::write(&path, format!("{count}\n")).expect("write count");
            println!("count {count}");
        }
        // Durability: writes and syncs a file, writes another without syncing, says so, then
        // waits for stdin to close (a test kills the host process meanwhile).
        "sync-and-wait" => {
            let mut f = fs::File::create(format!("{root}/synced.txt")).expect("create");
            f.write_all(&[b's'; 10_000]).expect("write synced");
            f.sync_all().expect("sync");
            fs::write(format!("{root}/written.txt"), "written, not synced\n").expect("write");
            println!("synced");
            std::io::stdout().flush().expect("flush");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        // Durability under a kill at any moment: file after file, each synced and then
        // announced, with renames and unsynced appends in between, until killed. Each round
        // also appends a 48 KiB chunk to big.bin (a run of clusters on a volume), every
        // byte of chunk k being k: whatever size big.bin is left with, its bytes say
        // whether they are the ones written there.
        "churn" => {
            const CHUNK: usize = 48 << 10;
            for i in 0u64.. {
                let mut big = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(format!("{root}/big.bin"))
                    .expect("open big.bin");
                let k = big.metadata().expect("big.bin metadata").len() as usize / CHUNK;
                big.write_all(&vec![k as u8; CHUNK]).expect("append to big.bin");
                drop(big);
                let tmp = format!("{root}/tmp-{i}");
                fs::write(&tmp, i.to_string().repeat(700)).expect("write");
                fs::rename(&tmp, format!("{root}/f{i}.txt")).expect("rename");
                let mut log = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(format!("{root}/log.txt"))
                    .expect("open log");
                log.write_all(format!("{i}\n").as_bytes()).expect("append");
                fs::File::open(format!("{root}/f{i}.txt"))
                    .and_then(|f| f.sync_all())
                    .expect("sync");
                println!("synced {i}");
                std::io::stdout().flush().expect("flush");
            }
        }
        // Capacity: keeps a small file, then writes until the volume is full, and checks that
        // the failure came at a write and the small file is whole.
        "fill" => {
            fs::write(format!("{root}/keep.txt"), "kept\n").expect("write keep");
            let mut f = fs::File::create(format!("{root}/big.bin")).expect("create big");
            let chunk = vec![7u8; 64 << 10];
            let mut written = 0u64;
            let error = loop {
                match f.write(&chunk) {
                    Ok(n) => written += n as u64,
                    Err(e) => break e,
                }
            };
            drop(f);
            let size = fs::metadata(format!("{root}/big.bin"))
                .expect("metadata")
                .len();
            println!("full after {written} bytes: {:?}", error.kind());
            println!("big.bin holds them: {}", size == written);
            println!(
                "keep.txt: {:?}",
                fs::read_to_string(format!("{root}/keep.txt")).expect("keep")
            );
            fs::remove_file(format!("{root}/big.bin")).expect("remove big");
            fs::write(format!("{root}/after.txt"), "room again\n").expect("write after");
            println!("after removing it: writable");
        }
        // Speed (benches/fs.rs): writes MIB MiB (argv[3]) in 64 KiB writes and syncs them,
        // reads them back in 64 KiB reads, checks them and removes the file; prints the two
        // times, measured here so that start-up does not count.
        "throughput" => {
            let mib: u64 = std::env::args()
                .nth(3)
                .and_then(|m| m.parse().ok())
                .expect("throughput MIB");
            let path = format!("{root}/throughput.bin");
            let mut chunk = vec![0u8; 64 << 10];
            let started = std::time::Instant::now();
            let mut f = fs::File::create(&path).expect("create");
            for i in 0..mib * 16 {
                chunk[0] = i as u8;
                f.write_all(&chunk).expect("write");
            }
            f.sync_data().expect("sync");
            drop(f);
            let wrote = started.elapsed();
            let started = std::time::Instant::now();
            let mut f = fs::File::open(&path).expect("open");
            let mut total = 0u64;
            loop {
                let n = f.read(&mut chunk).expect("read");
                if n == 0 {
                    break;
                }
                if total % (64 << 10) == 0 {
                    let i = total >> 16;
                    assert_eq!(chunk[0], i as u8, "chunk {i} read back wrong");
                }
                total += n as u64;
            }
            let read = started.elapsed();
            assert_eq!(total, mib << 20, "read back a different size");
            fs::remove_file(&path).expect("remove");
            println!(
                "throughput: wrote {mib} MiB in {} us, read in {} us",
                wrote.as_micros(),
                read.as_micros()
            );
        }
        other => panic!("unknown mode {other}"),
    }
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/data".to_string());
    if let Some(mode) = std::env::args().nth(2) {
        return live(&root, &mode);
    }
    println!("initial: {:?}", listing(&root));
    let input = fs::read_to_string(format!("{root}/input.txt")).expect("read input.txt");
    println!("input.txt: {input:?}");

    let out = format!("{root}/out/result.txt");
    fs::create_dir_all(format!("{root}/out")).expect("mkdir out");
    fs::write(&out, input.to_uppercase()).expect("write result");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .expect("open append");
    f.write_all(b"!\n").expect("append");
    drop(f);

    let mut f = fs::File::open(&out).expect("open result");
    f.seek(SeekFrom::Start(1)).expect("seek");
    let mut rest = String::new();
    f.read_to_string(&mut rest).expect("read rest");
    println!("result from offset 1: {rest:?}");
    println!("size: {}", fs::metadata(&out).expect("metadata").len());

    fs::rename(&out, format!("{root}/out/renamed.txt")).expect("rename");
    println!("out: {:?}", listing(&format!("{root}/out")));
    fs::remove_file(format!("{root}/out/renamed.txt")).expect("remove file");
    fs::remove_dir(format!("{root}/out")).expect("remove dir");
    match fs::read_to_string(format!("{root}/../escape")) {
        Ok(_) => println!("escape: read outside the preopen!"),
        Err(e) => println!("escape: refused ({:?})", e.kind()),
    }
    println!("final: {:?}", listing(&root));
}
