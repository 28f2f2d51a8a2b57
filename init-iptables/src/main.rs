use clap::Parser;

use portcullis_init::config::Config;

fn main() {
    let cfg = Config::parse();
    match portcullis_init::run(&cfg) {
        Ok(report) => {
            for line in report.lines {
                eprintln!("portcullis-init: {line}");
            }
        }
        Err(e) => {
            // Non-zero, so the pod does not start with a half-applied redirect.
            eprintln!("portcullis-init: error: {e:#}");
            std::process::exit(1);
        }
    }
}
