//! Writes synthetic face JPEGs (640×480, quality 85) into a directory, for
//! scripts that need real images without the test harness, such as
//! `scripts/upgrade-fixture`:
//!
//! ```sh
//! cargo run -p facegate-testkit --example faces -- DIR COUNT
//! ```
//!
//! The files are `face-1.jpg` … `face-COUNT.jpg`, each from its own seed, so
//! the same command writes the same bytes.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: faces DIR COUNT");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    let Some(count) = count.to_str().and_then(|c| c.parse::<u64>().ok()) else {
        eprintln!("COUNT must be a number");
        return ExitCode::from(2);
    };
    for i in 1..=count {
        let jpeg = facegate_testkit::synth::face_jpeg(640, 480, i, 85);
        let path = dir.join(format!("face-{i}.jpg"));
        if let Err(e) = std::fs::write(&path, jpeg) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
