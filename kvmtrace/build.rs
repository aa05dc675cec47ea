//! Builds the eBPF object (release, bpfel, nightly + bpf-linker) into OUT_DIR for embedding.
//! `AYA_BUILD_SKIP=1` writes an empty placeholder instead, so clippy and the pure-logic unit tests
//! run without nightly; such a binary refuses to trace.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join("kvmtrace"), []).context("writing the placeholder eBPF object")?;
    }
    let ebpf_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kvmtrace-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name: "kvmtrace-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
