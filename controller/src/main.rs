use clap::Parser;

/// Placeholder: this component is not built yet.
#[derive(Parser)]
#[command(name = "portcullis-controller", version)]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!("portcullis-controller: not implemented yet");
    std::process::exit(2);
}
