"""C sources compiled on the user's machine at first use (see spectune/int8_kernel.py)."""
