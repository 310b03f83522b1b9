//! The hello sample: greets, and echoes its arguments and one environment variable so tests
//! can check both round trips.
fn main() {
    println!("Hello from a wasmvm VM!");
    let args: Vec<String> = std::env::args().collect();
    if args.len() > 1 {
        println!("args: {:?}", &args[1..]);
    }
    if let Ok(v) = std::env::var("GREETING") {
        println!("GREETING={v}");
    }
}
