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
            let kind = if e.file_type().expect("file_type").is_dir() { "/" } else { "" };
            format!("{}{kind}", e.file_name().to_string_lossy())
        })
        .collect();
    names.sort();
    names
}

fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "/data".to_string());
    println!("initial: {:?}", listing(&root));
    let input = fs::read_to_string(format!("{root}/input.txt")).expect("read input.txt");
    println!("input.txt: {input:?}");

    let out = format!("{root}/out/result.txt");
    fs::create_dir_all(format!("{root}/out")).expect("mkdir out");
    fs::write(&out, input.to_uppercase()).expect("write result");
    let mut f = fs::OpenOptions::new().append(true).open(&out).expect("open append");
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
