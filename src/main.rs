//! The `granary` command: a node of the cart service (see `granary::cli`).

fn main() -> std::process::ExitCode {
    granary::cli::run(|node| node.carts())
}
