fn main() -> std::process::ExitCode {
    bk_build::cli::main()
}
