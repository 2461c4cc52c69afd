//! Run the local federation without the host: `cargo run -p fapi-federation --example dev [DIR]`.
//! Same as `fapi-host dev`, with faults enabled.

#[tokio::main]
async fn main() -> Result<(), fapi_federation::Error> {
    let mut opts = fapi_federation::DevOptions {
        faults_enabled: true,
        ..Default::default()
    };
    if let Some(dir) = std::env::args_os().nth(1) {
        opts.dir = dir.into();
    }
    fapi_federation::run_dev(opts).await
}
