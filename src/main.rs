fn main() -> std::process::ExitCode {
    // Before anything touches MLX or BLAS (see the function's docs).
    xtr_pipe::mlx::quiet_blas_threads();
    xtr_pipe::cli::main()
}
