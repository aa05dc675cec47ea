//! Every combination of the options that add code to the kernel programs loads, and counts
//! exactly. The verifier's verdict depends on the code around each change (an earlier build
//! was rejected with `--than` only, "R3 !read_ok"), so each combination is loaded for real.

use serde_json::json;

use crate::harness::{Guest, count_of, record_guest, require_kvm_and_root, vm_of};

const OPTIONS: [&[&str]; 4] = [
    &["--than", "1ms"],
    &["--flight", "16"],
    &["--guest-rips"],
    &["--stacks"],
];

#[test]
fn every_combination_of_kernel_options_loads_and_counts_exactly() {
    require_kvm_and_root();
    for mask in 0..1u32 << OPTIONS.len() {
        let extra: Vec<&str> = (0..OPTIONS.len())
            .filter(|i| mask & (1 << i) != 0)
            .flat_map(|i| OPTIONS[i].iter().copied())
            .collect();
        let mut guest = Guest::start(
            "it-options",
            &[
                "--run",
                "pio_out,port=0x70,count=2000;mmio_w,gpa=0xd0000000,count=500",
            ],
        );
        let (report, _) = record_guest(&mut guest, &extra);
        let vm = vm_of(&report, guest.pid);
        assert_eq!(
            count_of(vm, "ports", &[("port", json!(0x70))]),
            2_000,
            "{extra:?}"
        );
        assert_eq!(
            count_of(vm, "mmio", &[("gpa", json!(0xd000_0000u64))]),
            500,
            "{extra:?}"
        );
    }
}
