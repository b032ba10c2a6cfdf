//! The `granary` command: a node of the cart service (see `granary::cli`).

/// mimalloc, chosen by measurement: `granary_bench --only http` served
/// 8-10% more durable adds with it than with the system allocator (glibc
/// malloc), whose frees of buffers allocated on other threads showed in
/// every thread's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    granary::cli::run(|node| node.carts())
}
