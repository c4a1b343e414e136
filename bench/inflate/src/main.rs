//! Decompress every entry of a ZIP held in memory, five times, single-threaded, and print the
//! best pass: the deflate backend alone, without the filesystem.

use std::io::Read;
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("usage: inflate-bench FILE.zip");
    let data = std::fs::read(&path).expect("read the ZIP");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&data[..])).expect("a ZIP");
    let mut buf = vec![0u8; 256 * 1024];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let mut total = 0u64;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).expect("entry");
            loop {
                let n = entry.read(&mut buf).expect("inflate");
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        best = best.min(secs);
        eprintln!("{total} bytes in {secs:.3}s");
    }
    println!("best pass {best:.3}s");
}
