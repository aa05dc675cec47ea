//! `kvmtrace list`.

use std::io::{self, Write as _};

use crate::{cli::ListArgs, host::Host, render};

pub fn list(args: &ListArgs) -> anyhow::Result<()> {
    let vms = Host::default().vms();
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &vms)?;
        writeln!(out)?;
    } else {
        render::list::render(&vms, &mut out)?;
    }
    Ok(())
}
