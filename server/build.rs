//! Link-time settings for the `stellarchat` binary.
//!
//! A position-independent Rust binary of this size carries ~6 MB of relative relocations
//! (`.rela.dyn`), which the dynamic loader reads page by page at every start: resident memory
//! that does nothing after the first millisecond, and issue 9 bounds peak RSS at 1.2× the
//! model file. GNU ld ≥ 2.38 with glibc ≥ 2.36 can store them as `DT_RELR` bitmaps
//! (`-z pack-relative-relocs`), about 1 % of the size, keeping the executable position
//! independent (ASLR stays). The option is probed with the C compiler that links Rust on
//! Linux, so an older toolchain simply links as before.

use std::env;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const PACK_RELATIVE_RELOCS: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os == "linux" && target_env == "gnu" && linker_accepts(PACK_RELATIVE_RELOCS) {
        println!("cargo:rustc-link-arg-bins={PACK_RELATIVE_RELOCS}");
    }
}

/// Whether `cc` links a trivial program with `flag` silently: an ld that does not know a `-z`
/// keyword only warns that it ignored it (even under `--fatal-warnings`), so any output
/// counts as a refusal.
fn linker_accepts(flag: &str) -> bool {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = out_dir.join("relr_probe.c");
    let binary = out_dir.join("relr_probe");
    if std::fs::write(&source, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    Command::new(cc)
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .arg("-pie")
        .arg("-fPIE")
        .arg(flag)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.is_empty() && out.stderr.is_empty())
}
