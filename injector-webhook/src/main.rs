use clap::Parser;

/// Placeholder: this component is not built yet.
#[derive(Parser)]
#[command(name = "portcullis-injector", version)]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!("portcullis-injector: not implemented yet");
    std::process::exit(2);
}
