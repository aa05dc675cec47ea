//! `--guest-rips` and `--guest-symbols` on this host (kvm_pvm: kvm_exit never fires, so there
//! is no RIP to count, and the report says so); the attribution itself is tested in the nested
//! SVM rig (`nested_l1::guest_rips_name_the_exiting_instructions`).

use super::harness::*;

#[test]
fn guest_rips_where_kvm_exit_never_fires_say_so() {
    require_kvm_and_root();
    let mut guest = Guest::start("it-rips", &["--run", "pio_out,port=0x70,count=2000"]);
    let (report, _) = record_guest(&mut guest, &["--guest-rips"]);
    let gc = &report["guest_code"];
    assert_eq!(gc["exits"], 0, "{gc:#}");
    assert!(
        gc["unavailable"].as_str().unwrap().contains("kvm_pvm"),
        "{gc:#}"
    );
}

#[test]
fn guest_symbols_that_cannot_be_used_are_refused() {
    require_kvm_and_root();
    // An unreadable file: refused before tracing starts.
    let out = kvmtrace(&[
        "record",
        "--duration",
        "1s",
        "--guest-symbols",
        "vm01=/nonexistent/System.map",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read /nonexistent/System.map"), "{err}");
    // Not NAME=FILE.
    let out = kvmtrace(&["record", "--guest-symbols", "System.map"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=FILE"));
    // A recording made without --guest-rips has nothing to name.
    let mut guest = Guest::start("it-rips-none", &["--run", "pio_out,port=0x70,count=100"]);
    let file = temp("rips-none.kvmtrace");
    let file_arg = file.to_str().unwrap();
    record_guest_output(&mut guest, &["-o", file_arg]);
    let map = temp("rips-none.System.map");
    std::fs::write(&map, "0000400000006000 T kvmtrace_g_pio_out\n").unwrap();
    let symbols = format!("it-rips-none={}", map.display());
    let out = kvmtrace(&["report", "-i", file_arg, "--guest-symbols", &symbols]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("record with `kvmtrace record --guest-rips`"),
        "{err}"
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&map);
}
