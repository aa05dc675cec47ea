//! The diagnosis knowledge base (data/diagnosis.toml, compiled in): pattern -> likely cause ->
//! usual fix, matched by rules over what a storm is made of.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

const KB: &str = include_str!("../../data/diagnosis.toml");

#[derive(Clone, Debug, Deserialize)]
struct File {
    rule: Vec<Rule>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub cause: String,
    pub fix: String,
    pub reference: String,
    #[serde(default)]
    exit_reasons: Vec<String>,
    #[serde(default)]
    userspace: Vec<String>,
    #[serde(default)]
    ports: Vec<[u32; 2]>,
    #[serde(default)]
    msrs: Vec<u32>,
    #[serde(default)]
    mmio: bool,
    #[serde(default)]
    cpuid: bool,
}

/// What a storm is made of, as far as the rules care.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// kvm_exit reason names involved (primary and related).
    pub exit_reasons: Vec<String>,
    /// KVM_EXIT_* names involved.
    pub userspace: Vec<String>,
    pub port: Option<u16>,
    pub msr: Option<u32>,
    pub mmio: bool,
    pub cpuid: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    pub rule: String,
    pub title: String,
    pub cause: String,
    pub fix: String,
    pub reference: String,
}

pub fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        // A unit test parses this file, so a broken knowledge base never ships.
        toml::from_str::<File>(KB)
            .map(|f| f.rule)
            .unwrap_or_default()
    })
}

impl Rule {
    /// Every matcher the rule sets must agree with the facts: a port rule needs a port in range,
    /// an MSR rule the MSR, and so on; name lists match any involved reason.
    fn matches(&self, f: &Facts) -> bool {
        let mut any = false;
        let mut check = |set: bool, ok: bool| {
            if set {
                any = true;
            }
            !set || ok
        };
        let ports_ok = check(
            !self.ports.is_empty(),
            f.port.is_some_and(|p| {
                self.ports
                    .iter()
                    .any(|[lo, hi]| (*lo..=*hi).contains(&(p as u32)))
            }),
        );
        let msrs_ok = check(
            !self.msrs.is_empty(),
            f.msr.is_some_and(|m| self.msrs.contains(&m)),
        );
        // Reason lists and the mmio/cpuid flags are alternatives: any one of them may carry.
        let names =
            !self.exit_reasons.is_empty() || !self.userspace.is_empty() || self.mmio || self.cpuid;
        let names_ok = self.exit_reasons.iter().any(|r| f.exit_reasons.contains(r))
            || self.userspace.iter().any(|r| f.userspace.contains(r))
            || (self.mmio && f.mmio)
            || (self.cpuid && f.cpuid);
        let names_ok = check(names, names_ok);
        any && ports_ok && msrs_ok && names_ok
    }
}

/// The first rule that matches.
pub fn diagnose(facts: &Facts) -> Option<Diagnosis> {
    rules()
        .iter()
        .find(|r| r.matches(facts))
        .map(|r| Diagnosis {
            rule: r.id.clone(),
            title: r.title.clone(),
            cause: r.cause.clone(),
            fix: r.fix.clone(),
            reference: r.reference.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(f: Facts) -> String {
        diagnose(&f)
            .map(|d| d.rule)
            .unwrap_or_else(|| "none".into())
    }
    fn exit(names: &[&str]) -> Facts {
        Facts {
            exit_reasons: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
    fn port(p: u16) -> Facts {
        Facts {
            port: Some(p),
            exit_reasons: vec!["io".into()],
            userspace: vec!["IO".into()],
            ..Default::default()
        }
    }
    fn msr(m: u32) -> Facts {
        Facts {
            msr: Some(m),
            exit_reasons: vec!["MSR_WRITE".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_knowledge_base_parses_and_every_rule_has_text() {
        let r = toml::from_str::<File>(KB)
            .expect("data/diagnosis.toml parses")
            .rule;
        assert!(r.len() >= 20, "{} rules", r.len());
        for rule in &r {
            assert!(
                !rule.title.is_empty()
                    && !rule.cause.is_empty()
                    && !rule.fix.is_empty()
                    && !rule.reference.is_empty(),
                "{}",
                rule.id
            );
        }
        let mut ids: Vec<&str> = r.iter().map(|r| r.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), r.len(), "rule ids are unique");
    }

    #[test]
    fn port_rules() {
        assert_eq!(id(port(0x70)), "rtc");
        assert_eq!(id(port(0x71)), "rtc");
        assert_eq!(id(port(0x42)), "pit");
        assert_eq!(id(port(0x3fd)), "serial");
        assert_eq!(id(port(0x608)), "acpi-pm-timer");
        assert_eq!(id(port(0xb008)), "acpi-pm-timer");
        assert_eq!(id(port(0xcfc)), "pci-config");
        assert_eq!(
            id(port(0x1234)),
            "port-io",
            "unknown ports fall back to the generic rule"
        );
    }

    #[test]
    fn msr_rules() {
        assert_eq!(id(msr(0x6e0)), "tsc-deadline");
        assert_eq!(id(msr(0x830)), "x2apic-icr");
        assert_eq!(id(msr(0x80b)), "x2apic-timer");
        assert_eq!(id(msr(0x838)), "x2apic-timer");
        assert_eq!(id(msr(0xc000_0102)), "msr");
    }

    #[test]
    fn exit_reason_rules_vmx_and_svm() {
        for (names, want) in [
            (&["HLT"][..], "hlt"),
            (&["hlt"], "hlt"),
            (&["PAUSE_INSTRUCTION"], "pause"),
            (&["pause"], "pause"),
            (&["EPT_MISCONFIG"], "mmio-doorbell"),
            (&["EPT_VIOLATION"], "ept-violation"),
            (&["npf"], "ept-violation"),
            (&["EXTERNAL_INTERRUPT"], "external-interrupt"),
            (&["interrupt"], "external-interrupt"),
            (&["INTERRUPT_WINDOW"], "interrupt-window"),
            (&["vintr"], "interrupt-window"),
            (&["APIC_ACCESS"], "xapic-access"),
            (&["avic_unaccelerated_access"], "xapic-access"),
            (&["PREEMPTION_TIMER"], "preemption-timer"),
            (&["CPUID"], "cpuid"),
            (&["cpuid"], "cpuid"),
            (&["RDTSC"], "rdtsc"),
            (&["rdtscp"], "rdtsc"),
            (&["WBINVD"], "wbinvd"),
            (&["BUS_LOCK"], "bus-lock"),
            (&["buslock"], "bus-lock"),
            (&["IO_INSTRUCTION"], "port-io"),
            (&["MSR_READ"], "msr"),
            (&["TRIPLE_FAULT"], "none"),
        ] {
            assert_eq!(id(exit(names)), want, "{names:?}");
        }
    }

    #[test]
    fn mmio_and_userspace_rules() {
        // An NPF storm on an MMIO address is a doorbell, not a page fault.
        assert_eq!(
            id(Facts {
                mmio: true,
                exit_reasons: vec!["npf".into()],
                ..Default::default()
            }),
            "mmio-doorbell"
        );
        assert_eq!(
            id(Facts {
                mmio: true,
                userspace: vec!["MMIO".into()],
                ..Default::default()
            }),
            "mmio-doorbell"
        );
        assert_eq!(
            id(Facts {
                userspace: vec!["HLT".into()],
                ..Default::default()
            }),
            "hlt"
        );
        assert_eq!(
            id(Facts {
                userspace: vec!["IRQ_WINDOW_OPEN".into()],
                ..Default::default()
            }),
            "interrupt-window"
        );
        assert_eq!(
            id(Facts {
                cpuid: true,
                ..Default::default()
            }),
            "cpuid"
        );
        assert_eq!(id(Facts::default()), "none");
    }
}
