//! `kvmtrace serve`: a long-running Prometheus exporter on the same collector as `record`.
//! Every interval it drains the kernel maps, learns VMs that appeared (from their events, as
//! `record` does; with `-d NAME`, by looking for the name while no VM of that name runs, and
//! adding the new pid to the kernel's filter), notes VMs that ended (before the interval's events
//! count, so a VM restarted under its name takes over its identity: [`metrics`]), feeds the
//! interval and the tracer's cost into the metrics, and removes the series of VMs gone for
//! `--grace`. HTTP ([`http`]) runs beside it on the same tokio runtime. SIGINT or SIGTERM
//! detaches everything and ends it with status 0.

mod hist;
mod http;
mod labels;
mod metrics;
mod topk;

use std::{
    collections::{BTreeMap, HashMap, btree_map},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    error::Error,
    host::Host,
    host::identities::{learn_identities, learn_threads, running_vcpu_threads},
    model::Interval,
    model::identity::Vm,
    source::live::{TraceOptions, Tracer, check_root},
    untrusted,
};

/// Runs the exporter until SIGINT or SIGTERM.
/// What `serve` exports, and how.
pub struct Options {
    pub listen: std::net::SocketAddr,
    /// VMs followed by name (across restarts) and by pid; none: every VM.
    pub names: Vec<String>,
    pub pids: Vec<u32>,
    pub interval: Duration,
    pub per_vcpu: bool,
    pub grace: Duration,
    pub max_series: u64,
    pub top_keys: u32,
    pub tracefs: Option<std::path::PathBuf>,
    pub max_keys: u32,
    pub max_detail_keys: u32,
    pub max_keys_per_vcpu: u32,
    pub storms: crate::analyze::storms::Config,
    pub bpf_stats: crate::source::live::cost::StatsMode,
}

pub async fn serve(args: Options) -> Result<(), Error> {
    // Signals first: a Ctrl-C during set-up still ends in an orderly teardown.
    let io = |what: &str| {
        let what = what.to_string();
        move |source| Error::Io { what, source }
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(io("handling SIGINT"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("handling SIGTERM"))?;
    check_root()?;
    // Before any tracing: an address in use fails at once.
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: args.listen,
            source,
        })?;
    let host = Host::default();
    let filtered = !(args.names.is_empty() && args.pids.is_empty());
    let mut directory: BTreeMap<u32, Vm> = if filtered {
        // (select with no name and no pid is every VM)
        let mut vms = if args.pids.is_empty() {
            Vec::new()
        } else {
            host.select(&[], &args.pids)?
        };
        vms.extend(named(&host, &args.names));
        vms.into_iter().map(|vm| (vm.pid, vm)).collect()
    } else {
        host.vms().into_iter().map(|vm| (vm.pid, vm)).collect()
    };
    for name in &args.names {
        if !directory.values().any(|vm| answers_to(vm, name)) {
            log::warn!(
                "no VM named `{}` runs now; it is looked for every interval",
                untrusted::escape(name)
            );
        }
    }
    let mut tracer = Tracer::start(&TraceOptions {
        pids: filtered.then(|| directory.keys().copied().collect()),
        tracefs: args.tracefs.clone(),
        max_latency_keys: args.max_keys,
        max_detail_keys: args.max_detail_keys,
        detail_keys_per_thread: args.max_keys_per_vcpu,
        follow: !args.names.is_empty(),
        bpf_stats: args.bpf_stats,
        ..TraceOptions::default()
    })?;
    tracer.open(|| running_vcpu_threads(&host, &directory))?;
    let mut starts: HashMap<u32, Option<u64>> = directory
        .keys()
        .map(|&pid| (pid, start_time(&host.proc_root, pid)))
        .collect();

    let mut registry = Registry::with_prefix("kvmtrace");
    let uuids = host.clone();
    let mut exporter = metrics::Exporter::new(
        &mut registry,
        metrics::Settings {
            per_vcpu: args.per_vcpu,
            max_series: args.max_series,
            top_keys: args.top_keys as usize,
            storms: args.storms,
        },
    )
    .with_uuids(move |pid| uuids.uuid(pid));
    exporter.set_capacity(tracer.capacity());
    let cost = tracer.cost();
    if let Some(why) = &cost.unavailable {
        log::warn!("no BPF run-time statistics (kvmtrace_bpf_* series): {why}");
    }
    exporter.set_cost(&cost);
    let server = tokio::spawn(http::serve(listener, Arc::new(registry)));
    eprintln!(
        "kvmtrace: serving metrics of {} at http://{}/metrics; Ctrl-C or SIGTERM to stop",
        if filtered {
            format!("the selected VMs ({} running now)", directory.len())
        } else {
            format!("all VMs on this host ({} running now)", directory.len())
        },
        args.listen
    );

    let mut new_threads = tracer.new_threads()?;
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    let result = loop {
        tokio::select! {
            tids = new_threads.next() => {
                let tids = match tids {
                    Ok(tids) => tids,
                    Err(e) => break Err(e),
                };
                // Named as they start: a VM that lives less than an interval keeps its name.
                learn_threads(&host, &mut directory, &tids);
                for pid in tids.iter().map(|t| t.tgid) {
                    if directory.contains_key(&pid) {
                        starts.entry(pid).or_insert_with(|| start_time(&host.proc_root, pid));
                    }
                }
            }
            _ = ticker.tick() => {
                let started = Instant::now();
                let iv = match tracer.drain() {
                    Ok(iv) => iv,
                    Err(e) => break Err(e),
                };
                learn(&host, &mut directory, &iv);
                for &pid in directory.keys() {
                    starts.entry(pid).or_insert_with(|| start_time(&host.proc_root, pid));
                }
                // Which VMs ended, before this interval's events count: a VM restarted under
                // its name finds its previous process gone, and takes over its identity.
                let now = Instant::now();
                for pid in exporter.pids() {
                    let recorded = starts.get(&pid).copied().flatten();
                    match start_time(&host.proc_root, pid) {
                        // The same process (a VM that vanished before it was learned has no
                        // recorded start: it is gone).
                        Some(t) if Some(t) == recorded => exporter.set_running(pid, true, now),
                        // The pid now belongs to another process: the VM is gone, and the pid
                        // is learned anew.
                        Some(_) if recorded.is_some() => {
                            exporter.forget(pid, now);
                            directory.remove(&pid);
                            starts.remove(&pid);
                        }
                        _ => exporter.set_running(pid, false, now),
                    }
                }
                exporter.apply(&iv, &tracer.take_ended_exits(), &directory);
                exporter.set_cost(&tracer.cost());
                for pid in exporter.expire(now, args.grace) {
                    directory.remove(&pid);
                    starts.remove(&pid);
                    if filtered {
                        tracer.untrace_pid(pid);
                    }
                }
                if let Err(e) = follow_names(&host, &args.names, &mut directory, &mut tracer) {
                    break Err(e);
                }
                exporter.drained(started.elapsed());
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    server.abort();
    tracer.close()?;
    drop(new_threads); // its map goes with the tracer's
    drop(tracer); // every program detached, every map freed
    result
}

/// Names for the VMs first seen in this interval (while they still run): from their events, as
/// `record` learns them, and from their threads' CPU accounting, which can come an interval
/// before their first event (a vCPU thread is accounted from its first KVM_RUN). A VM's
/// identity is bound at its first sight: one learned too late would be `pid N` for good.
fn learn(host: &Host, directory: &mut BTreeMap<u32, Vm>, iv: &Interval) {
    learn_identities(host, directory, iv);
    for t in &iv.threads {
        if let btree_map::Entry::Vacant(slot) = directory.entry(t.tgid)
            && let Some(vm) = host.vm(t.tgid)
        {
            slot.insert(vm);
        }
    }
}

/// The VMs that answer to any of `names` now.
fn named(host: &Host, names: &[String]) -> Vec<Vm> {
    if names.is_empty() {
        return Vec::new();
    }
    host.vms()
        .into_iter()
        .filter(|vm| names.iter().any(|n| answers_to(vm, n)))
        .collect()
}

/// `-d NAME` matches the raw or the escaped form of any of a VM's names.
fn answers_to(vm: &Vm, name: &str) -> bool {
    vm.aliases.contains(name) || vm.aliases.contains(&untrusted::escape(name))
}

/// While a name given with `-d` has no running VM, looks for one (a VM restarted under its
/// name), and traces it. The scan of /proc costs only while a named VM is down.
fn follow_names(
    host: &Host,
    names: &[String],
    directory: &mut BTreeMap<u32, Vm>,
    tracer: &mut Tracer,
) -> Result<(), Error> {
    let running = |d: &BTreeMap<u32, Vm>, name: &str| {
        d.values()
            .any(|vm| answers_to(vm, name) && host.proc_root.join(vm.pid.to_string()).exists())
    };
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !running(directory, n))
        .cloned()
        .collect();
    for vm in named(host, &missing) {
        if let btree_map::Entry::Vacant(slot) = directory.entry(vm.pid) {
            log::info!("following VM {} (pid {})", vm.name, vm.pid);
            tracer.trace_pid(vm.pid)?;
            slot.insert(vm);
        }
    }
    Ok(())
}

/// When process `pid` started (field 22 of /proc/PID/stat, in clock ticks since boot): tells a
/// VM from a later process that got its pid. None when there is no such process.
fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?;
    start_time_of_stat(&String::from_utf8_lossy(&stat))
}

/// Field 22 of a stat line; fields are counted after the command name's closing parenthesis
/// (the name may hold spaces and parentheses).
fn start_time_of_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3: field 22 is index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22() {
        let stat = "4242 (CPU 0/KVM) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 3 0 \
                    987654 1000000 200 18446744073709551615";
        assert_eq!(start_time_of_stat(stat), Some(987654));
        assert_eq!(start_time_of_stat("garbage"), None);
    }
}
