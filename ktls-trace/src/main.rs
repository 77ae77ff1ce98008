//! The `ktls-trace` binary: everything is in the library (`ktls_trace::main`).

fn main() -> std::process::ExitCode {
    ktls_trace::main()
}
