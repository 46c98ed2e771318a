fn main() {
    // Before anything touches MLX or BLAS (see the function's docs).
    xtr_pipe::mlx::quiet_blas_threads();
    let status = xtr_pipe::cli::main();
    xtr_pipe::mlx::exit(status)
}
