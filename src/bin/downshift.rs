//! The `downshift` command-line tool.

fn main() {
    eprintln!("downshift: the CLI is being built; see `issues show 2`");
    std::process::exit(2);
}
