//! Compiles etcd's KV API (client only) with protox: the bench runs the same
//! workload against etcd. It is not part of Credence's API, so it lives here,
//! not in `credence-proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let etcd = "etcd/kv.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile([etcd], ["etcd"])?)?;
    Ok(())
}
