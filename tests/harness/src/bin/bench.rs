//! `dbgrant-bench`: the benchmark (see `dbgrant_harness::bench` and
//! `docs/benchmarks.md`). Run through `deploy/bench.sh`, which builds the
//! control plane, the release operator and this binary first.

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    // `dbgrant-bench --render report.json`: the markdown of an earlier run.
    let argv: Vec<String> = std::env::args().collect();
    if let [_, flag, path] = argv.as_slice()
        && flag == "--render"
    {
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        print!("{}", dbgrant_harness::bench::report::markdown(&report));
        return Ok(());
    }
    let args = dbgrant_harness::bench::args::parse()?;
    // Ctrl-C or SIGTERM drops the run: the operator is killed and the
    // control plane stopped by their Drop implementations.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let report = tokio::select! {
        r = dbgrant_harness::bench::run(args) => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        _ = term.recv() => anyhow::bail!("terminated"),
    };
    println!("{}", dbgrant_harness::bench::report::markdown(&report));
    Ok(())
}
