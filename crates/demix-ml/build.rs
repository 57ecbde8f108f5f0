fn main() {
    demix_build::link_libtorch();
}
