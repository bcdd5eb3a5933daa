//! `cargo xtask proto`: regenerates `proto/src/lattice.daemon.v1.rs` from
//! `proto/lattice.proto` (needs `protoc`: `apt install protobuf-compiler`).
//!
//! `cargo xtask guests [--check]`: builds every built-in guest (`guests/*`) to a
//! `wasm32-unknown-unknown` core module, turns it into a component with `wit-component`, and
//! writes `guests/dist/<name>.wasm` plus `guests/dist/TOOLCHAIN` (the compiler that built them),
//! and the test guests under `tests/guests/dist/`.
//!
//! Toolchain: rustup's `wasm32-unknown-unknown` target when installed; otherwise Debian's
//! `rustc-web` with `-Zbuild-std` and `wasm-ld` from `lld-22`, installed with apt when missing.
//! Builds are reproducible: source paths are remapped, no debug info, one codegen unit.
//!
//! `--check` rebuilds into a temporary folder and compares with the committed bytes. When the
//! toolchain differs from the one recorded it says so instead of failing on the bytes, and puts
//! the fresh builds in place so the tests that follow run against them.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// (package, component name, output folder relative to the workspace) of every guest built.
const GUESTS: &[(&str, &str, &str)] = &[
    ("lattice-guest-kvstore", "kvstore", "guests/dist"),
    ("lattice-guest-counter", "counter", "guests/dist"),
    ("lattice-guest-system", "system", "guests/dist"),
    ("lattice-guest-rootstore", "rootstore", "guests/dist"),
    ("lattice-guest-fs", "fs", "guests/dist"),
    ("lattice-guest-evil", "evil", "tests/guests/dist"),
];

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_WASM_LD: &str = "/usr/lib/llvm-22/bin/wasm-ld";
const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "lld-22"];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["guests"] => build(&root, &root).map(|_| ()),
        ["guests", "--check"] => check(&root),
        ["proto"] => proto(&root),
        _ => {
            eprintln!("usage: cargo xtask guests [--check] | proto");
            eprintln!(
                "  proto            regenerate proto/src from proto/lattice.proto (needs protoc)"
            );
            eprintln!("  guests           rebuild guests/dist/*.wasm from guests/*");
            eprintln!("  guests --check   rebuild into a temp dir and compare with guests/dist");
            std::process::exit(2);
        }
    }
}

fn proto(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("proto");
    tonic_prost_build::configure()
        .out_dir(dir.join("src"))
        .emit_rerun_if_changed(false)
        .compile_protos(&[dir.join("lattice.proto")], &[dir])
        .context("generating the API code (is protoc installed? apt install protobuf-compiler)")?;
    let status = Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(root.join("proto/src/lattice.daemon.v1.rs"))
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("rustfmt did not run; the generated code is unformatted");
    }
    println!("proto/src/lattice.daemon.v1.rs regenerated");
    Ok(())
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(here
        .parent()
        .and_then(Path::parent)
        .context("xtask is not inside the workspace")?
        .to_path_buf())
}

enum Toolchain {
    Rustup,
    Debian,
}

fn has_rustup_wasm_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-unknown-unknown")
        })
        .unwrap_or(false)
}

fn ensure_debian_toolchain() -> anyhow::Result<()> {
    let ready = Path::new(DEBIAN_RUSTC).exists()
        && Path::new(DEBIAN_CARGO).exists()
        && Path::new(DEBIAN_WASM_LD).exists()
        && Path::new("/usr/lib/rustlib/src/rust/library").exists();
    if ready {
        return Ok(());
    }
    eprintln!(
        "installing the Debian wasm toolchain: apt-get install {}",
        DEBIAN_PACKAGES.join(" ")
    );
    let sudo = !is_root();
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            cmd.arg("apt-get");
        }
        let status = cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    run(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q"];
    install.extend_from_slice(DEBIAN_PACKAGES);
    run(&install)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn rustc_version(rustc: &str) -> anyhow::Result<String> {
    let out = Command::new(rustc)
        .arg("-V")
        .output()
        .with_context(|| format!("running {rustc} -V"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds every guest and writes components under `out` (the workspace root, or a scratch
/// folder with the same layout); returns the toolchain description.
fn build(root: &Path, out: &Path) -> anyhow::Result<String> {
    let toolchain = if has_rustup_wasm_target() {
        Toolchain::Rustup
    } else {
        ensure_debian_toolchain()?;
        Toolchain::Debian
    };
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let rustflags = format!(
        "--remap-path-prefix={}=/src --remap-path-prefix={}=/cargo",
        root.display(),
        home.join("registry/src").display()
    );
    let target_dir = root.join("target/guests");
    let mut cmd;
    let description;
    match toolchain {
        Toolchain::Rustup => {
            cmd = Command::new("cargo");
            cmd.args([
                "build",
                "--target",
                "wasm32-unknown-unknown",
                "--profile",
                "guest",
            ]);
            description = format!(
                "{} (rustup wasm32-unknown-unknown)",
                rustc_version("rustc")?
            );
        }
        Toolchain::Debian => {
            cmd = Command::new(DEBIAN_CARGO);
            cmd.args([
                "build",
                "--target",
                "wasm32-unknown-unknown",
                "--profile",
                "guest",
                "-Zbuild-std=std,panic_abort",
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            .env("RUSTC", DEBIAN_RUSTC)
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", DEBIAN_WASM_LD);
            description = format!(
                "{} (Debian rustc-web, build-std)",
                rustc_version(DEBIAN_RUSTC)?
            );
        }
    }
    for (package, _, _) in GUESTS {
        cmd.args(["-p", package]);
    }
    cmd.arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", &rustflags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(root);
    eprintln!("building guests with {description}");
    let status = cmd.status().context("running cargo for the guests")?;
    if !status.success() {
        bail!("guest build failed ({status})");
    }
    for (package, name, folder) in GUESTS {
        let core_path = target_dir
            .join("wasm32-unknown-unknown/guest")
            .join(format!("{}.wasm", package.replace('-', "_")));
        let core = std::fs::read(&core_path)
            .with_context(|| format!("reading {}", core_path.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&core)
            .and_then(|e| e.validate(true).encode())
            .with_context(|| format!("making a component of {name}"))?;
        let dir = out.join(folder);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{name}.wasm")), &component)?;
        if folder.starts_with("tests/") {
            // Tests also install the core module, which the node makes into a component.
            std::fs::write(dir.join(format!("{name}.core.wasm")), &core)?;
        }
        eprintln!(
            "{name}: core {} B → component {} B, blake3 {}",
            core.len(),
            component.len(),
            blake3::hash(&component).to_hex()
        );
    }
    std::fs::create_dir_all(out.join("guests/dist"))?;
    std::fs::write(
        out.join("guests/dist/TOOLCHAIN"),
        format!("{description}\n"),
    )?;
    Ok(description)
}

fn check(root: &Path) -> anyhow::Result<()> {
    let dist = root.join("guests/dist");
    let recorded = std::fs::read_to_string(dist.join("TOOLCHAIN")).unwrap_or_default();
    let fresh = root.join("target/guests/check");
    let _ = std::fs::remove_dir_all(&fresh);
    let toolchain = build(root, &fresh)?;
    let mut stale = Vec::new();
    for (_, name, folder) in GUESTS {
        let committed =
            std::fs::read(root.join(folder).join(format!("{name}.wasm"))).unwrap_or_default();
        let rebuilt = std::fs::read(fresh.join(folder).join(format!("{name}.wasm")))?;
        if committed != rebuilt {
            stale.push(*name);
        }
    }
    if stale.is_empty() {
        println!("guests/dist is up to date ({toolchain})");
        return Ok(());
    }
    if recorded.trim() != toolchain.trim() {
        println!(
            "guests/dist was built with `{}`, this machine has `{toolchain}`: bytes differ for {} \
             (expected with another compiler); using the fresh builds for this checkout's tests",
            recorded.trim(),
            stale.join(", ")
        );
        // Put the fresh components in place (not committed) so the tests run against them.
        build(root, root)?;
        return Ok(());
    }
    bail!(
        "guests/dist is stale for {}: run `cargo xtask guests` and commit guests/dist",
        stale.join(", ")
    )
}
