//! Records what the Rust core was built with, for `helixrt._core.build_info()` and `helixrt doctor`.

use std::process::Command;

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HELIXRT_RUSTC_VERSION={version}");
    println!(
        "cargo:rustc-env=HELIXRT_PROFILE={}",
        std::env::var("PROFILE").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=HELIXRT_PYO3_VERSION={}",
        locked_version("pyo3")
    );
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
}

/// The version of `crate_name` that Cargo.lock pins (the crate offers no other way to learn a
/// dependency's version at build time).
fn locked_version(crate_name: &str) -> String {
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let needle = format!("name = \"{crate_name}\"\nversion = \"");
    lock.find(&needle)
        .map(|at| &lock[at + needle.len()..])
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("unknown")
        .to_owned()
}
