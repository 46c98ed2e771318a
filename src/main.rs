fn main() -> std::process::ExitCode {
    xtr_pipe::cli::main()
}
