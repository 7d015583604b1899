//! Installing the tools and clients a test runs, when they are missing:
//! a test that needs a tool installs it, and fails if it cannot.

use std::process::{Command, Stdio};

/// Runs a command as root (directly, or through sudo).
pub fn as_root(args: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    } else {
        let mut c = Command::new("sudo");
        c.args(args);
        c
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs `packages` with apt (after an update); fails the test if it
/// cannot.
pub fn apt_install(packages: &[&str]) {
    eprintln!("installing {packages:?} with apt");
    let _ = as_root(&["apt-get", "update", "-qq"]);
    let mut args = vec!["apt-get", "install", "-y", "-qq"];
    args.extend_from_slice(packages);
    assert!(as_root(&args), "cannot install {packages:?}");
}

/// Installs `package` with apt unless `present()` already holds.
pub fn ensure_apt(package: &str, present: impl Fn() -> bool) {
    if present() {
        return;
    }
    apt_install(&[package]);
    assert!(present(), "{package} installed but still missing");
}

/// Installs `pip_name` with pip; whether pip succeeded.
pub fn pip_install(pip_name: &str) -> bool {
    let ok = |args: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    // Debian marks the system Python as externally managed.
    ok(&[pip_name]) || ok(&["--break-system-packages", pip_name])
}

/// Installs the Python package `pip_name` unless `module` imports.
pub fn ensure_python(module: &str, pip_name: &str) {
    let imports = || {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if imports() {
        return;
    }
    eprintln!("installing {pip_name} with pip");
    pip_install(pip_name);
    assert!(imports(), "cannot install {pip_name}");
}
