//! `--format csv`, whole: every row of web01 per vCPU and VM-wide, and of kvm_pvm.

use super::{fixture, output};
use crate::render::csv;

fn csv(report: &crate::report::Report) -> String {
    output(|out| csv::render(report, out))
}

const HEADER: &str =
    "table,vm,pid,vcpu,key,detail,count,per_sec,time_pct,total_ns,min_ns,p50_ns,p99_ns,max_ns\n";

/// Rates over 4 s with 3 decimals; time_pct of the 1 058.615 ms of paired exit time (hlt: 1 001
/// ms = 94.558 %); the latency columns in ns (io's p50 is its 1 us bucket's midpoint, 1 008).
/// Every kept detail row is there, the 11th port too (the text report shows 10); the hlt row
/// counts the exit open at stop (1 002) but has 1 001 samples (1 001 ms).
#[test]
fn web01_per_vcpu_every_row() {
    let rows = "\
exit,web01,100,0,io,SVM,46000,11500.000,4.818,51000000,1000,1008,6000,6000
exit,web01,100,0,msr,SVM,2000,500.000,0.378,4000000,2000,2000,2000,2000
exit,web01,100,1,cpuid,SVM,1200,300.000,0.057,600000,500,500,500,500
exit,web01,100,1,hlt,SVM,1002,250.500,94.558,1001000000,1000000,1000000,1000000,1000000
exit,web01,100,1,io,SVM,450,112.500,0.064,675000,1500,1500,1500,1500
exit,web01,100,1,npf,SVM,400,100.000,0.113,1200000,3000,3000,3000,3000
exit,web01,100,1,msr,SVM,70,17.500,0.013,140000,2000,2000,2000,2000
userspace_exit,web01,100,0,IO,,46000,11500.000,,460000000,10000,10000,10000,10000
userspace_exit,web01,100,1,IO,,450,112.500,,3600000,8000,8000,8000,8000
userspace_exit,web01,100,1,MMIO,,200,50.000,,3000000,15000,15000,15000,15000
userspace_exit,web01,100,0,restart,,4,1.000,,,,,,
port,web01,100,0,0x70,out size 1,42000,10500.000,,,,,,
port,web01,100,0,0x71,in size 1,4000,1000.000,,,,,,
port,web01,100,1,0xcfc,in size 4,80,20.000,,,,,,
port,web01,100,1,0xcf8,out size 4,72,18.000,,,,,,
port,web01,100,1,0x608,in size 4,64,16.000,,,,,,
port,web01,100,1,0x3f8,out size 1,56,14.000,,,,,,
port,web01,100,1,0x3fd,in size 1,48,12.000,,,,,,
port,web01,100,1,0x510,out size 2,40,10.000,,,,,,
port,web01,100,1,0x511,in size 1,32,8.000,,,,,,
port,web01,100,1,0x40,in size 1,24,6.000,,,,,,
port,web01,100,1,0x61,in size 1,16,4.000,,,,,,
mmio,web01,100,1,0xfebf1000,write len 4,120,30.000,,,,,,
mmio,web01,100,1,0xfebf1004,unsatisfied-read len 4,80,20.000,,,,,,
mmio,web01,100,1,0xfebf1004,read len 4,80,20.000,,,,,,
msr,web01,100,0,0x6e0,write,2000,500.000,,,,,,
msr,web01,100,1,0x1b,read,60,15.000,,,,,,
msr,web01,100,1,0x3a,read #GP,4,1.000,,,,,,
cpuid,web01,100,1,0x1,,600,150.000,,,,,,
cpuid,web01,100,1,0x40000000,,400,100.000,,,,,,
cpuid,web01,100,1,0xd,,200,50.000,,,,,,
other_keys,web01,100,1,ports,2 keys not shown (12 events); 6 events without a key,18,4.500,,,,,,
other_keys,web01,100,1,MSRs,0 keys not shown (0 events); 6 events without a key,6,1.500,,,,,,
";
    assert_eq!(csv(&fixture::web01(true)), [HEADER, rows].concat());
}

/// VM-wide, the vCPU column is empty and the vCPUs' rows merge: io 46 450 with 51.675 ms
/// (4.881 %); the IO round trips 46 000 x 10 us + 450 x 8 us = 463.6 ms, min 8 us, p50 and p99
/// the 10 us bucket's midpoint (9 984 ns), max 10 us.
#[test]
fn web01_vm_wide_every_row() {
    let rows = "\
exit,web01,100,,io,SVM,46450,11612.500,4.881,51675000,1000,1008,6000,6000
exit,web01,100,,msr,SVM,2070,517.500,0.391,4140000,2000,2000,2000,2000
exit,web01,100,,cpuid,SVM,1200,300.000,0.057,600000,500,500,500,500
exit,web01,100,,hlt,SVM,1002,250.500,94.558,1001000000,1000000,1000000,1000000,1000000
exit,web01,100,,npf,SVM,400,100.000,0.113,1200000,3000,3000,3000,3000
userspace_exit,web01,100,,IO,,46450,11612.500,,463600000,8000,9984,9984,10000
userspace_exit,web01,100,,MMIO,,200,50.000,,3000000,15000,15000,15000,15000
userspace_exit,web01,100,,restart,,4,1.000,,,,,,
port,web01,100,,0x70,out size 1,42000,10500.000,,,,,,
port,web01,100,,0x71,in size 1,4000,1000.000,,,,,,
port,web01,100,,0xcfc,in size 4,80,20.000,,,,,,
port,web01,100,,0xcf8,out size 4,72,18.000,,,,,,
port,web01,100,,0x608,in size 4,64,16.000,,,,,,
port,web01,100,,0x3f8,out size 1,56,14.000,,,,,,
port,web01,100,,0x3fd,in size 1,48,12.000,,,,,,
port,web01,100,,0x510,out size 2,40,10.000,,,,,,
port,web01,100,,0x511,in size 1,32,8.000,,,,,,
port,web01,100,,0x40,in size 1,24,6.000,,,,,,
port,web01,100,,0x61,in size 1,16,4.000,,,,,,
mmio,web01,100,,0xfebf1000,write len 4,120,30.000,,,,,,
mmio,web01,100,,0xfebf1004,unsatisfied-read len 4,80,20.000,,,,,,
mmio,web01,100,,0xfebf1004,read len 4,80,20.000,,,,,,
msr,web01,100,,0x6e0,write,2000,500.000,,,,,,
msr,web01,100,,0x1b,read,60,15.000,,,,,,
msr,web01,100,,0x3a,read #GP,4,1.000,,,,,,
cpuid,web01,100,,0x1,,600,150.000,,,,,,
cpuid,web01,100,,0x40000000,,400,100.000,,,,,,
cpuid,web01,100,,0xd,,200,50.000,,,,,,
other_keys,web01,100,,ports,2 keys not shown (12 events); 6 events without a key,18,4.500,,,,,,
other_keys,web01,100,,MSRs,0 keys not shown (0 events); 6 events without a key,6,1.500,,,,,,
";
    assert_eq!(csv(&fixture::web01(false)), [HEADER, rows].concat());
}

/// kvm_pvm: no exit rows; rates over 3 s (MSR 0x10: 24 000 / 3 = 8 000/s).
#[test]
fn kvm_pvm_every_row() {
    let rows = "\
userspace_exit,guest7,200,,IO,,1500,500.000,,18000000,12000,12000,12000,12000
userspace_exit,guest7,200,,MMIO,,90,30.000,,1800000,20000,20000,20000,20000
port,guest7,200,,0x3f8,out size 1,1500,500.000,,,,,,
mmio,guest7,200,,0xfe000000,write len 4,90,30.000,,,,,,
msr,guest7,200,,0x10,read,24000,8000.000,,,,,,
cpuid,guest7,200,,0x1,,60,20.000,,,,,,
";
    assert_eq!(csv(&fixture::guest7_pvm(false)), [HEADER, rows].concat());
}

/// The report promises that with the "other keys" rows every detail table adds up to the exact
/// total of its kind; text and JSON have those rows, CSV has none. web01's port events: 42 000 +
/// 4 000 on vCPU 0, 4 x 111 + 6 on vCPU 1 = 46 450, of which 8 + 4 (folded rows) + 6 (unkeyed)
/// are only in "other ports".
#[test]
fn detail_rows_add_up_to_every_event() {
    let out = csv(&fixture::web01(true));
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let ports: u64 = rows
        .iter()
        .filter(|r| r[0] == "port" || r.contains(&"ports"))
        .map(|r| r[6].parse::<u64>().unwrap())
        .sum();
    assert_eq!(ports, 46_450, "{out}");
}
