use clap::Parser;

/// Placeholder: this component is not built yet.
#[derive(Parser)]
#[command(name = "portcullis-init", version)]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!("portcullis-init: not implemented yet");
    std::process::exit(2);
}
