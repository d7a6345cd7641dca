//! `dbgrant crdgen`: write the CRDs to disk or stdout.

use std::fs;

use anyhow::Context as _;

use crate::{api::crdgen, cli::CrdgenArgs};

/// Write every CRD into each `--out` directory, or print them all.
pub fn run(args: &CrdgenArgs) -> anyhow::Result<()> {
    let crds = crdgen::all();
    if args.out.is_empty() {
        for (_, crd) in &crds {
            print!("{}", crdgen::render(crd)?);
        }
        return Ok(());
    }
    for dir in &args.out {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, crd) in &crds {
            let path = dir.join(file);
            fs::write(&path, crdgen::render(crd)?).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
