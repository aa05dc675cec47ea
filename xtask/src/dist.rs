//! `cargo xtask dist [--l1]`: what a user installs, in target/dist/: the static x86_64 kvmtrace
//! (eBPF object embedded: no Rust, LLVM, clang or kernel headers needed where it runs), its shell
//! completions (completions/: bash, zsh, fish) and man pages (man/: kvmtrace.1 and one per
//! subcommand), both generated from the real clap definition by kvmtrace-gen, and the .deb that
//! installs them (cargo-deb, `[package.metadata.deb]` in kvmtrace/Cargo.toml). Then it checks them
//! on this machine ([`crate::dist_check`]) and, with `--l1`, installs the .deb with dpkg in the
//! nested rig's L1 and records a guest there ([`crate::deb_l1`]).

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use anyhow::Context as _;

use crate::{
    requirements::require,
    sh::{cargo, cmd, root, run},
    static_build,
};

/// The artefacts in target/dist/.
pub struct Dist {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub deb: PathBuf,
}

pub fn run_dist(l1: bool) -> anyhow::Result<()> {
    let dist = build()?;
    crate::dist_check::check(&dist)?;
    if l1 {
        crate::deb_l1::install_and_record(&dist.deb, &crate::l1::Options::default())?;
    }
    println!("dist: {}", dist.deb.display());
    Ok(())
}

pub fn build() -> anyhow::Result<Dist> {
    require(&["cargo-deb"])?;
    let bins = static_build::binaries()?;
    let dir = root().join("target/dist");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let binary = dir.join("kvmtrace");
    std::fs::copy(&bins.kvmtrace, &binary)
        .with_context(|| format!("copying {}", bins.kvmtrace.display()))?;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
    run(cmd(bins.generator.to_str().context("path")?).arg(&dir))?;
    // The assets are the files above (kvmtrace/Cargo.toml): nothing for cargo-deb to build.
    // --quiet: else it warns, per asset, that a path outside target/release is not built by it.
    run(cargo()
        .args(["deb", "-p", "kvmtrace", "--no-build", "--quiet", "--output"])
        .arg(&dir))?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("cargo deb wrote no .deb into target/dist")?;
    Ok(Dist { dir, binary, deb })
}
