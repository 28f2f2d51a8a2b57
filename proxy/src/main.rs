use clap::Parser;

/// Placeholder: this component is not built yet.
#[derive(Parser)]
#[command(name = "portcullis-proxy", version)]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!("portcullis-proxy: not implemented yet");
    std::process::exit(2);
}
